"""Ships ``lightning_split.pth`` (``strategy="split"`` in LightningCLI, see ``lightning_split/_startup.py``).

All metadata is in pyproject.toml; this file only adds the start-up file to the wheel and to
the editable wheel, at the root of site-packages where Python reads ``.pth`` files.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "lightning_split.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(PTH, str(Path(self.build_lib, PTH)), preserve_mode=0)


class EditableWheelWithPth(editable_wheel):
    def _create_wheel_file(self, bdist_wheel):
        wheel_path = super()._create_wheel_file(bdist_wheel)
        try:
            from wheel.wheelfile import WheelFile
        except ImportError:
            from setuptools._vendor.wheel.wheelfile import WheelFile
        with WheelFile(wheel_path, "a") as wheel:
            wheel.write(PTH, PTH)
        return wheel_path


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
