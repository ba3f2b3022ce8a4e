"""PyTorch diffusion UNets (guided-diffusion/ADM, diffusers UNet2DModel) and pytorch-fid's FID
Inception -> jaxdiff checkpoints: `core.convert`, the safe pickle reader and the key maps.
`python -m convert_weights` is only its command line."""
