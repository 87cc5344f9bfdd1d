"""Sub-commands of the ``facenet`` CLI; each module has ``register(subparsers)`` (see ``facenet.cli``)."""
