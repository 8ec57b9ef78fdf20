"""Hostile strings for the report tests (issue 22), in a module of its own: several conftest.py files
exist, so test files cannot import names from one."""

# Strings a hostile results folder may carry, each trying another context: element, attribute, script,
# URL scheme. Each payload would set document.title if it ever ran. Those that may name a file (a metric's
# cem_<metric>.csv) hold no '/'.
HOSTILE = {
    "alignment_drop": 'm"><img src=x onerror="document.title=1">',
    "dreambooth-alice": 'db\'><svg onload="document.title=2">',
    "a photo of a robot": "</script><script>document.title=3</script>",
    "animals": '<b onmouseover="document.title=4">x',
    "mug": "javascript:document.title=5",
    "torch": '<iframe srcdoc="<script>document.title=6</script>">',
    "p004": 'p"4',
}
