"""The policy pack: `pulumi preview --policy-pack policy` (rules live in voicestack_policies.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project, for infra.spec

import voicestack_policies  # noqa: E402
from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

PolicyPack(name="voicestack", enforcement_level=EnforcementLevel.MANDATORY, policies=voicestack_policies.POLICIES)
