"""gmia-defend: measure and mitigate identity leakage of GAN generators while they train.

Public API lives in the subpackages (see DESIGN.md): ``gmia_defend.data``, ``.embedders``,
``.attack``, ``.callbacks``, ``.models``, ``.mitigations``.
"""

__version__ = "0.1.0"
