"""Installs the seg_ext package. The tested versions are pinned in requirements.txt."""

from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path(__file__).with_name("seg_ext").joinpath("__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        version["v"] = line.split("=")[1].strip().strip('"')


def pins(name: str) -> list[str]:
    """An extra's pins, kept in one place (requirements-<name>.txt), shared with make test-all."""
    lines = Path(__file__).with_name(f"requirements-{name}.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="seg_ext",
    version=version["v"],
    description="Semantic and instance segmentation on PyTorch, torchvision and segmentation-models-pytorch",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["seg_ext", "seg_ext.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "segmentation-models-pytorch>=0.4,<0.7",
        "albumentations>=2.0,<2.1",
        "pycocotools>=2.0.7",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-image>=0.22",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "pyyaml>=6.0",
        "pillow>=10.0",
        "safetensors>=0.4",  # model folders (also a dependency of segmentation-models-pytorch)
    ],
    extras_require={"test": ["pytest>=8.0", "scikit-learn>=1.4", "import-linter>=2.0", "selenium>=4.20"], "fast-coco": ["faster-coco-eval>=1.6"],
                    "onnx": ["onnx>=1.17", "onnxscript>=0.3", "onnxruntime>=1.20"], "tensorboard": ["tensorboard>=2.14"],
                    "cluster": pins("cluster"), "tracking": pins("tracking")},
)
