"""Only what setup.cfg cannot say: the course's lessons go into the package.

The lessons stay in the top-level ``lessons/`` folder (their source, edited by
instructors); a wheel or a plain ``pip install .`` carries them as the package
data of ``gponsim.lessons.course`` (``gponsim/lessons/course/*.toml``), where
:mod:`gponsim.lessons.model` finds them. An editable install reads ``lessons/``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["gponsim", "gponsim.*"]) + ["gponsim.lessons.course"],
    package_dir={"gponsim.lessons.course": "lessons"},
    package_data={"gponsim.lessons.course": ["*.toml"]},
)
