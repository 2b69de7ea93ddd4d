"""unimask: unified multimodal masked-diffusion models of the LLaDA2.0-Uni kind.

The component folders live at the repository root (``unimodal/``, ``tokenizers/``,
``decoders/``, ``pipelines/``, ``configs/``, ``benchmarks/``) and install as subpackages of
``unimask``. ``tokenizers/`` has no ``__init__.py`` on purpose (see pyproject.toml): a regular
package of that name at the repository root would shadow Hugging Face ``tokenizers``.
"""

import os as _os

__version__ = "0.1.0"

# In a wheel install every subpackage sits inside this folder. In an editable install the
# folders stay at the checkout root, and setuptools' editable finder cannot resolve the
# namespace subpackage ``unimask.tokenizers`` there, so the checkout root joins the search path.
_checkout_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "tokenizers")) and _os.path.isfile(
    _os.path.join(_checkout_root, "tokenizers", "token_layout.py")
):
    __path__.append(_checkout_root)
