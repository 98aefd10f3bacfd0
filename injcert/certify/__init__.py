"""Certificates of trained score networks: certified bounds, empirical refutations, reports.

``certify(model_or_path, ...) -> Certificate``; see :mod:`injcert.certify.certificate` and
``proofs/08-certificate.md`` for what a ``PASS`` proves.
"""

from __future__ import annotations

from .certificate import certify as certify
from .report import schema as schema
from .report import validate as validate
from .result import FAIL as FAIL
from .result import INFO as INFO
from .result import PASS as PASS
from .result import SKIPPED as SKIPPED
from .result import Certificate as Certificate
from .result import CertifyConfig as CertifyConfig
from .result import Property as Property

__all__ = ["certify", "Certificate", "CertifyConfig", "Property", "PASS", "FAIL", "INFO", "SKIPPED",
           "schema", "validate"]
