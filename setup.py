"""Build script for the one compiled part: the region-of-interest JPEG decoder
(cnntrain/data/_jpegcrop.c, against the system's libjpeg-turbo). It is optional: where
libjpeg's headers are missing the build warns and cnntrain decodes whole JPEGs instead.
Everything else about the package is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithRecipes(build_py):
    """Ship recipes/ inside the package as cnntrain/recipes (where load_recipe looks)."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "cnntrain" / "recipes"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(__file__).parent / "recipes", target)


jpegcrop = Extension(
    "cnntrain.data._jpegcrop",
    sources=["cnntrain/data/_jpegcrop.c"],
    libraries=["jpeg"],
    extra_compile_args=["-O2"],
    optional=True,
)

setup(ext_modules=[jpegcrop], cmdclass={"build_py": BuildPyWithRecipes})
