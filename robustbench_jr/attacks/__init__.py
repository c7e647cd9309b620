"""The fooling-distance searches, their shared base, the registry and the peer-library adapters.

``build_search(name, config)`` gives a configured search; ``search.run(model, x, y, seed,
sample_ids)`` returns a per-sample :class:`SearchResult`. See
:mod:`robustbench_jr.attacks.base` for the conventions (pixel space, failures as
+inf, re-verification, per-sample seeding).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..errors import unknown_name
from .adapters import PeerSearch, is_peer_name, peer_name
from .base import Search, SearchResult, verify_adversarials
from .cw import CWConfig, CWSearch
from .ddn import DDNConfig, DDNSearch
from .deepfool import DeepFoolConfig, DeepFoolSearch
from .fgsm import FGSMConfig, FGSMSearch
from .jsma import JSMAConfig, JSMASearch
from .noise import NoiseConfig, NoiseSearch
from .pgd import PGDConfig, PGDSearch

#: name -> search class (the order ``--attacks all`` runs them in is evaluation.plan.ALL_SEARCHES)
SEARCHES: dict[str, type[Search]] = {
    cls.name: cls for cls in (NoiseSearch, FGSMSearch, PGDSearch, CWSearch, DeepFoolSearch, JSMASearch,
                               DDNSearch)
}


def build_search(name: str, config: Optional[Mapping[str, Any]] = None) -> Search:
    """The search registered as ``name``, configured from ``config`` (a mapping of its
    Config fields; unknown names or keys raise :class:`ConfigError` listing the valid ones).
    ``LIB:ATTACK`` names (``foolbox:L2DeepFoolAttack``, ``advlib:ddn``, ``torchattacks:FAB``)
    give a peer library's attack as a search, ``config`` being its keyword arguments
    (:mod:`.adapters`)."""
    if is_peer_name(name):
        return PeerSearch(name, config)
    if name not in SEARCHES:
        raise unknown_name("search", name, SEARCHES)
    return SEARCHES[name](config)


__all__ = [
    "CWConfig", "CWSearch", "DDNConfig", "DDNSearch", "DeepFoolConfig", "DeepFoolSearch", "FGSMConfig",
    "FGSMSearch", "JSMAConfig", "JSMASearch", "NoiseConfig", "NoiseSearch", "PGDConfig", "PGDSearch", "PeerSearch",
    "SEARCHES", "Search", "SearchResult", "build_search", "is_peer_name", "peer_name", "verify_adversarials",
]
