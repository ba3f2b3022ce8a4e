"""Independent ports of the PyTorch constructors' module trees: {state-dict key: shape}.

Written from guided_diffusion/unet.py (`UNetModel.__init__`) and diffusers
models/unets/unet_2d.py + unet_2d_blocks.py (`UNet2DModel.__init__`, get_down_block/get_up_block),
without the Flax models, so the converters' key lists are checked against a second derivation.
"""

from __future__ import annotations


class _SD(dict):
    def linear(self, p, i, o):
        self[p + ".weight"], self[p + ".bias"] = (o, i), (o,)

    def conv(self, p, i, o, k=3):
        self[p + ".weight"], self[p + ".bias"] = (o, i, k, k), (o,)

    def conv1d(self, p, i, o):
        self[p + ".weight"], self[p + ".bias"] = (o, i, 1), (o,)

    def norm(self, p, c):
        self[p + ".weight"], self[p + ".bias"] = (c,), (c,)


def adm_state_dict_shapes(
    image_size, in_channels, model_channels, out_channels, num_res_blocks,
    attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2,
    num_classes=None, use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=-1,
    num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
    use_new_attention_order=False,
):  # fmt: skip
    sd, temb = _SD(), model_channels * 4

    def res(p, ch, out):
        sd.norm(f"{p}.in_layers.0", ch)
        sd.conv(f"{p}.in_layers.2", ch, out)
        sd.linear(f"{p}.emb_layers.1", temb, 2 * out if use_scale_shift_norm else out)
        sd.norm(f"{p}.out_layers.0", out)
        sd.conv(f"{p}.out_layers.3", out, out)
        if out != ch:
            sd.conv(f"{p}.skip_connection", ch, out, 1)

    def attn(p, ch):
        sd.norm(f"{p}.norm", ch)
        sd.conv1d(f"{p}.qkv", ch, 3 * ch)
        sd.conv1d(f"{p}.proj_out", ch, ch)

    sd.linear("time_embed.0", model_channels, temb)
    sd.linear("time_embed.2", temb, temb)
    if num_classes is not None:
        sd["label_emb.weight"] = (num_classes, temb)
    ch = input_ch = int(channel_mult[0] * model_channels)
    sd.conv("input_blocks.0.0", in_channels, ch)
    chans, ds, n = [ch], 1, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            res(f"input_blocks.{n}.0", ch, int(mult * model_channels))
            ch = int(mult * model_channels)
            if ds in attention_resolutions:
                attn(f"input_blocks.{n}.1", ch)
            chans.append(ch)
            n += 1
        if level != len(channel_mult) - 1:
            if resblock_updown:
                res(f"input_blocks.{n}.0", ch, ch)
            elif conv_resample:
                sd.conv(f"input_blocks.{n}.0.op", ch, ch)
            chans.append(ch)
            ds *= 2
            n += 1
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    n = 0
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            ich = chans.pop()
            res(f"output_blocks.{n}.0", ch + ich, int(model_channels * mult))
            ch = int(model_channels * mult)
            j = 1
            if ds in attention_resolutions:
                attn(f"output_blocks.{n}.1", ch)
                j = 2
            if level and i == num_res_blocks:
                if resblock_updown:
                    res(f"output_blocks.{n}.{j}", ch, ch)
                elif conv_resample:
                    sd.conv(f"output_blocks.{n}.{j}.conv", ch, ch)
                ds //= 2
            n += 1
    sd.norm("out.0", ch)
    sd.conv("out.2", input_ch, out_channels)
    return dict(sd)


def unet2d_state_dict_shapes(config: dict) -> dict:
    c = {
        "in_channels": 3, "out_channels": 3, "down_block_types": None, "up_block_types": None,
        "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2,
        "attention_head_dim": 8, "norm_num_groups": 32, "resnet_time_scale_shift": "default",
        "add_attention": True, "num_class_embeds": None, "time_embedding_dim": None,
        "mid_block_type": "UNetMidBlock2D", "attn_norm_num_groups": None,
    }  # fmt: skip
    c.update({k: v for k, v in config.items() if k in c})
    boc, layers = list(c["block_out_channels"]), c["layers_per_block"]
    temb = c["time_embedding_dim"] or boc[0] * 4
    emb_out = 2 if c["resnet_time_scale_shift"] == "scale_shift" else 1
    sd = _SD()

    def resnet(p, i, o):
        sd.norm(f"{p}.norm1", i)
        sd.conv(f"{p}.conv1", i, o)
        sd.linear(f"{p}.time_emb_proj", temb, emb_out * o)
        sd.norm(f"{p}.norm2", o)
        sd.conv(f"{p}.conv2", o, o)
        if i != o:
            sd.conv(f"{p}.conv_shortcut", i, o, 1)

    def attention(p, ch, norm=True):
        if norm:
            sd.norm(f"{p}.group_norm", ch)
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            sd.linear(f"{p}.{name}", ch, ch)

    sd.conv("conv_in", c["in_channels"], boc[0])
    sd.linear("time_embedding.linear_1", boc[0], temb)
    sd.linear("time_embedding.linear_2", temb, temb)
    if c["num_class_embeds"] is not None:
        sd["class_embedding.weight"] = (c["num_class_embeds"], temb)
    out = boc[0]
    for i, kind in enumerate(c["down_block_types"]):
        inp, out = out, boc[i]
        for j in range(layers):
            resnet(f"down_blocks.{i}.resnets.{j}", inp if j == 0 else out, out)
            if kind == "AttnDownBlock2D":
                attention(f"down_blocks.{i}.attentions.{j}", out)
        if i != len(boc) - 1:
            sd.conv(f"down_blocks.{i}.downsamplers.0.conv", out, out)
    if c["mid_block_type"] is not None:
        resnet("mid_block.resnets.0", boc[-1], boc[-1])
        if c["add_attention"]:
            norm = (
                c["attn_norm_num_groups"] is not None or c["resnet_time_scale_shift"] == "default"
            )
            attention("mid_block.attentions.0", boc[-1], norm)
        resnet("mid_block.resnets.1", boc[-1], boc[-1])
    rev = boc[::-1]
    out = rev[0]
    for i, kind in enumerate(c["up_block_types"]):
        prev, out = out, rev[i]
        inp = rev[min(i + 1, len(boc) - 1)]
        for j in range(layers + 1):
            skip = inp if j == layers else out
            resnet(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else out) + skip, out)
            if kind == "AttnUpBlock2D":
                attention(f"up_blocks.{i}.attentions.{j}", out)
        if i != len(boc) - 1:
            sd.conv(f"up_blocks.{i}.upsamplers.0.conv", out, out)
    sd.norm("conv_norm_out", boc[0])
    sd.conv("conv_out", boc[0], c["out_channels"])
    return dict(sd)
