"""Pure rule logic of tracewatch: no I/O, no wall clock, no Kafka; standard library only.

The stream layer calls three steps: :func:`detectors.messages.parse` (validate a message),
:func:`detectors.router.route` (message → per-code events and stateless alerts) and
:func:`detectors.code_ledger.step` (one code's state + one event → new state and alerts).
``RULE_MODULES`` maps each rule of SPEC §4 to the module whose docstring states it.
"""

from __future__ import annotations

from typing import Final

from detectors.model import Rule

RULE_MODULES: Final[dict[Rule, str]] = {
    Rule.DUPLICATE_SALE: "detectors.duplicate_sale",
    Rule.SPLIT_OVERDISPENSE: "detectors.split_overdispense",
    Rule.SUBSTITUTION: "detectors.substitution",
    Rule.FLOWBACK: "detectors.flowback",
    Rule.RETURN_WITHOUT_SALE: "detectors.return_without_sale",
    Rule.EXPIRED_SALE: "detectors.code_quality",
    Rule.INVALID_CODE: "detectors.code_quality",
    Rule.BARCODE_AS_TRACE_CODE: "detectors.code_quality",
    Rule.HOARDING: "detectors.hoarding",
}
