"""Modules of facenet-pytorch, the peer implementation, loaded straight from its installed wheel
(a helper of the tests and benchmarks, not part of the installed package).

Its package ``__init__`` imports torchvision, which has no CPU build for this torch, so the
package itself cannot be imported here. Comparisons (tests, benchmarks) load single module
files instead, with the few imports they make stubbed for the duration of the load.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


def load_peer_module(relative_path: str, stubs: dict[str, dict[str, Any]]) -> types.ModuleType | None:
    """``facenet_pytorch/<relative_path>`` as a module, with ``stubs`` (module name -> attributes)
    standing in for its imports while it loads; None when facenet-pytorch is not installed."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None:
        return None
    path = Path(spec.submodule_search_locations[0]) / relative_path
    modules = {}
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__path__ = []
        module.__dict__.update(attributes)
        modules[name] = module
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        dotted = "facenet_pytorch." + relative_path.removesuffix(".py").replace("/", ".")  # for relative imports
        module_spec = importlib.util.spec_from_file_location(dotted, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


def peer_inception_resnet_v1() -> types.ModuleType | None:
    """facenet-pytorch's ``models/inception_resnet_v1.py``; its download helpers are stubbed, never used."""
    return load_peer_module(
        "models/inception_resnet_v1.py",
        {
            "requests": {},
            "requests.adapters": {"HTTPAdapter": object},
            "facenet_pytorch": {},
            "facenet_pytorch.models": {},
            "facenet_pytorch.models.utils": {},
            "facenet_pytorch.models.utils.download": {"download_url_to_file": None},
        },
    )
