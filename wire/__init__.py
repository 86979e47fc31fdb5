"""The contract every part imports: messages, codec, topics, signing, delivery keys, artifact identity
and the manifest format. Stdlib only (plus ``cryptography`` in :mod:`wire.signing`), versioned
(``SCHEMA_VERSION``; an unknown version is rejected loudly). Imports no part of edgebench."""

__version__ = "0.1.0"
