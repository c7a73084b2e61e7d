"""Pure text helpers shared by training and sampling: caption cleaning and the reference prompt strings.

``osctl.text.clean.clean_caption`` is the training-time caption cleaner of the reference (§1.4 step 3).
The two strings below are the ones Open-Sora-Plan v1.3's sampler wraps every prompt in and uses as the
negative prompt (§7.4); they live in the core so a command can default to them without importing a
plugin (the ``template`` refiner re-exports them). Newlines and indentation are part of the strings:
they change the token ids, and the golden pipeline fixtures were produced with exactly these.
"""

from __future__ import annotations

#: The positive template: the (refined) prompt goes where ``{}`` is.
POSITIVE_TEMPLATE = "\n    high quality, high aesthetic, {}\n    "

#: The reference negative prompt used for classifier-free guidance at sampling time.
NEGATIVE_PROMPT = (
    "\n    nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, \n    low quality, normal quality, jpeg artifacts, signature, watermark, "
    "username, blurry.\n    "
)

__all__ = ["NEGATIVE_PROMPT", "POSITIVE_TEMPLATE"]
