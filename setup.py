"""Install mindcv: ``pip install -e ".[test]"`` (see README.md)."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "mindcv", "version.py")) as f:
    exec(f.read(), version)

with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="mindcv",
    version=version["__version__"],
    description="MnasNet suite for MindSpore: models, weight conversion, training, export, architecture search",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["mindcv", "mindcv.*"]),
    include_package_data=True,
    package_data={"mindcv": ["data/imagenet_classes.txt", "kernels/depthwise_direct.cc"]},
    install_requires=[
        "mindspore==2.10.0",
        # MindSpore 2.10's tensor/scalar arithmetic and several dataset paths break with numpy 2
        "numpy>=1.25,<2",
        "pyyaml>=5.3",
        "pillow>=9.0",
        "opencv-python-headless>=4.5,<4.12",
        "tqdm",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "pytest-xdist>=3.5",
            "black>=24",
            "isort>=5.12",
            "ruff>=0.4",
            "matplotlib>=3.5",
            "onnx>=1.14",
            "onnxruntime>=1.16",
        ],
        "plot": ["matplotlib>=3.5"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
    entry_points={
        "console_scripts": [
            "mindcv-convert=mindcv.tools.convert_weights:main",
            "mindcv-cpu-isa=mindcv.utils.cpu_isa:main",
        ]
    },
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
    license="Apache-2.0",
)
