"""bakery: bake, scan and promote immutable machine and container images."""

__version__ = "0.1.0"
