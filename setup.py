from pathlib import Path

from setuptools import setup

setup(
    name="ssl-zoo",
    version="0.1.0",
    description="Self-supervised vision encoders: a torch.hub zoo with safetensors weights, honest probes, "
                "and the training code that reproduces them",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["zoo", "eval", "training", "training.augmentation", "training.datacentric", "training.experiments",
              "training.methods"],
    package_data={"zoo": ["bundled/*/model.safetensors", "bundled/*/config.json"],
                  "training": ["recipes/*.yaml"], "training.augmentation": ["_fastaug.c"]},
    py_modules=["hubconf"],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "huggingface_hub>=0.20",
        "safetensors>=0.4",
        "scikit-learn>=1.3",
        "pandas>=2.0",
        "tabulate>=0.9",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "numpy>=1.24",
        "pillow>=9.0",
        "scipy>=1.10",
        "matplotlib>=3.7",
    ],
    # olah: a real HF-compatible hub served on loopback for tests/test_hf_loopback.py; timm: that test loads a
    # published mirror with timm.create_model("hf-hub:..."); timm / transformers: the timm:, hf-hub: and hf: model
    # specs (zoo/external.py, tests/test_external.py)
    extras_require={
        # jax + flax: tests/test_flax.py builds UvA tutorial 17's Flax ResNet-18 and compares features
        "test": ["pytest>=7", "hypothesis>=6", "olah==0.5.4", "timm>=0.9", "transformers>=4.35", "jax[cpu]>=0.4.20",
                 "flax>=0.8", "msgpack>=1.0"],
        "timm": ["timm>=0.9"],
        "transformers": ["transformers>=4.35"],
        # `sslzoo convert --format flax-msgpack` needs only msgpack; jax + flax run the Flax models themselves
        "jax": ["jax[cpu]>=0.4.20", "flax>=0.8", "msgpack>=1.0"],
        # benchmarks/: the alternatives they time (lightly's SimCLR pipeline, sklearn's LogisticRegression).
        # lightly's own requirements (pytorch_lightning, hydra) are not needed by benchmarks/train_speed.py;
        # to keep torch untouched: pip install --no-deps lightly lightning-utilities
        "bench": ["lightly>=1.5", "lightning-utilities>=0.10", "scikit-learn>=1.3"],
    },
    entry_points={"console_scripts": ["sslzoo=training.cli:main"]},
)
