"""Small fakes of the AUTOMATIC1111 v1.10.1 / Forge ``modules`` package, written for these tests
from reading the webui's interfaces (modules/scripts.py, processing.py, shared*.py,
script_callbacks.py, extra_networks.py, images.py, api/api.py). No webui code is copied: only the
names, signatures and the order in which the webui calls extensions are reproduced."""
