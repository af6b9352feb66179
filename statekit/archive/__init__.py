"""The archive layer: age encryption (age.py), keys (keys.py) and the container format."""
