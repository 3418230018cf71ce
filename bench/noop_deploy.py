"""The floor for a pyinfra run (bench/deploy_speed.py): one operation that changes nothing."""

from pyinfra.operations import files

files.directory(name="/tmp exists", path="/tmp")
