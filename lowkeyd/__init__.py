"""lowkeyd: keep your face out of face-recognition databases.

Layers, each ignorant of the ones above it:

* :mod:`lowkeyd.engine` - the cloaking engine (models, weights, faces, attack).
  Pixels in, pixels out; it knows nothing of files, folders or daemons.
* :mod:`lowkeyd.photo` - decoding, metadata and encoding of photo files.
  It knows nothing of torch.
* :mod:`lowkeyd.serving` - the resident models' worker, its jobs, the outbox and the
  local API; :mod:`lowkeyd.pipeline` wires the two layers below together for it.
* :mod:`lowkeyd.daemon` (watched folders, state, notifications, status page) and
  :mod:`lowkeyd.cluster` (Ray Serve) - side by side on serving.
"""

__version__ = "0.1.0"
