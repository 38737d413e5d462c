"""lowkeyd: keep your face out of face-recognition databases.

Three layers, each ignorant of the ones above it:

* :mod:`lowkeyd.engine` - the cloaking engine (models, weights, faces, attack).
  Pixels in, pixels out; it knows nothing of files, folders or daemons.
* :mod:`lowkeyd.photo` - decoding, metadata and encoding of photo files.
  It knows nothing of torch.
* :mod:`lowkeyd.daemon` - config, watching, state, outbox, notifications and
  the local API; it wires the two layers together.
"""

__version__ = "0.1.0"
