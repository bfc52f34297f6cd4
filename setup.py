"""Python packaging of rvm (pip / setuptools).

The same checkout is also an ament_cmake ROS 2 package (package.xml + CMakeLists.txt): colcon
builds it with CMake, which generates the rvm_ros.msg / rvm_ros.srv interfaces and installs the
Python packages below next to them. This file is used for pip installs (`pip install -e '.[dev]'`).

Deployment stays light: the base install runs exported (ONNX) models only. The `torch` extra
adds training / export, `dev` adds the test and lint tools. torch is pinned exactly: an
unpinned torch pulls a multi-GB CUDA build.
"""

from setuptools import find_packages, setup

# x86_64 Linux gets the GPU build of ONNX Runtime (it also runs on the CPU), others the CPU build.
_ORT_GPU = 'platform_system == "Linux" and platform_machine == "x86_64"'
_ORT_CPU = 'platform_system != "Linux" or platform_machine != "x86_64"'

INSTALL_REQUIRES = [
    "numpy~=2.4",
    "pyyaml~=6.0",
    "opencv-python-headless~=5.0",  # the node's image codec and readouts (tracking, masks)
    f"onnxruntime-gpu~=1.31; {_ORT_GPU}",
    f"onnxruntime~=1.31; {_ORT_CPU}",
]

TORCH_EXTRA = [
    "torch==2.13.0",
    "safetensors~=0.8.0",
    "onnx~=1.23",
    "av~=18.1",
    "tqdm~=4.70",
    "tensorboard~=2.21",
    "matplotlib~=3.11",
    "scikit-image~=0.26.0",
]

DEV_EXTRA = [
    "pytest~=9.2",
    "ruff==0.17.6",  # exact: formatting output changes between ruff releases
    "rosbags~=0.11.9",
    "transformers==5.23.0",  # exact: peer models (VideoMAE, V-JEPA 2, DINOv2) of the peers bench
    *TORCH_EXTRA,
]

setup(
    name="rvm",
    version="0.1.0",
    description="Recurrent Video Masked Autoencoders (PyTorch) with a ROS 2 perception node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rvm_core", "rvm_core.*", "rvm_ros", "rvm_ros.*"]),
    include_package_data=True,
    package_data={
        "rvm_core": ["**/*.yaml", "**/*.json", "weights/*.safetensors", "weights/*.onnx"],
        "rvm_ros": ["data/*"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={"torch": TORCH_EXTRA, "dev": DEV_EXTRA},
    entry_points={
        "console_scripts": [
            "rvm = rvm_core.cli:main",
            "rvm-ros = rvm_ros.cli:main",
            "rvm_node = rvm_ros.node:main",
        ],
    },
    zip_safe=False,
)
