"""Maps the top-level folders of the repository onto the `genie.*` namespace.

The design card keeps `serving/ registry/ semantic/ workers/ protos/` at the top level; they install as
`genie.serving`, `genie.registry`, ...  Subpackages follow their parent's mapping.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "protos": "genie.protos",
    "semantic": "genie.semantic",
    "registry": "genie.registry",
    "workers": "genie.workers",
    "serving": "genie.serving",
    "benchmarks": "genie.benchmarks",
    "client": "genie.client",
}

packages = ["genie"]
package_dir = {"genie": "genie"}
for folder, name in FOLDERS.items():
    packages.append(name)
    package_dir[name] = folder
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "genie.protos": ["*.proto"],
        "genie.benchmarks": ["data/*"],
        "genie.workers.engine": ["*.cpp", "*.h"],  # native kernels are compiled from source on first use
    },
)
