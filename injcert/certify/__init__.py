"""Certificates of trained score networks: certified bounds, empirical refutations, reports.

``certify(model_or_path, ...) -> Certificate``; see :mod:`injcert.certify.certificate` and
``proofs/08-certificate.md`` for what a ``PASS`` proves.
"""

from __future__ import annotations

from .certificate import FAIL as FAIL
from .certificate import INFO as INFO
from .certificate import PASS as PASS
from .certificate import SKIPPED as SKIPPED
from .certificate import Certificate as Certificate
from .certificate import CertifyConfig as CertifyConfig
from .certificate import Property as Property
from .certificate import certify as certify
from .report import schema as schema
from .report import validate as validate

__all__ = ["certify", "Certificate", "CertifyConfig", "Property", "PASS", "FAIL", "INFO", "SKIPPED",
           "schema", "validate"]
