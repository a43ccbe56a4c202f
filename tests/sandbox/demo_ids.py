"""Ids and keys of the built-in demo data set (``service/sandbox/demo-data.json``)."""

from __future__ import annotations

PARTNER_ID = "5d3c1f0a9b8e4d7c6a5b4c3d2e1f0a9b"
PARTNER_AK = "HPUADEMOPARTNER00001"
PARTNER_SK = "DemoPartnerSecretKey00000000000000000001"
AGENCY = "bss_partner_demo"

OTHER_PARTNER_ID = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
OTHER_AK = "HPUAOTHERPARTNER0002"
OTHER_SK = "OtherPartnerSecretKey0000000000000000002"
OTHER_AGENCY = "bss_partner_other"

ACME = "5195dd1a71a41647de36d9e21345bd0b"  # discount 0.90
GLOBEX = "bc86300f80b56f9ead58dfcb2ffa4237"  # discount 0.85
INITECH = "496a8e80facdb32725729fb5ecc44cd8"  # no discount
UMBRELLA = "cb13f19e2db652838975a5f47f035ee6"  # did not grant the agency
HOOLI = "429c16d7d9903bc328be7af02c4df3bf"  # advisory customer, no agency
STARK = "e0e2af052c86c89edf676f6040f6f21e"  # the other partner's customer

ACME_PROJECT_NORTH = "ddcba2d6979a8bb84f5c81c52e135dba"  # cn-north-4
ACME_PROJECT_SOUTH = "61471da321fd483a793ad496679975a8"  # cn-south-1
GLOBEX_PROJECT_NORTH = "18b5311d21d62f6f136e62070e448927"

QUOTA_MAIN = "cq-demo-main"  # 10000.00
QUOTA_LOW = "cq-demo-low"  # 15.00
QUOTA_EXPIRED = "cq-demo-expired"
QUOTA_FROZEN = "cq-demo-frozen"
QUOTA_OTHER = "cq-other-main"
