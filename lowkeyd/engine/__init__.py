"""The cloaking engine: face recognisers, their weights, face detection and the LowKey attack.

Pixels in, pixels out. Nothing here knows about files on disk (other than
weight files), folders, configs or daemons.
"""
