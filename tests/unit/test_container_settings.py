from __future__ import annotations

from sandbox.container import SANDBOX_USER, SENTRY_MEMORY_MIB, SERVICE_LABEL, container_settings
from sandbox.policy import Policy


def test_policy_becomes_a_locked_down_gvisor_container(policies: dict[str, Policy]) -> None:
    policy = policies["humaneval"]
    settings = container_settings(policy, "img:tag", {"owner": "me"})
    assert settings["runtime"] == "runsc"
    assert settings["network_mode"] == "none"
    assert settings["read_only"] is True
    assert settings["user"] == SANDBOX_USER and not SANDBOX_USER.startswith("0")
    assert settings["cap_drop"] == ["ALL"] and "cap_add" not in settings
    assert settings["security_opt"] == ["no-new-privileges"]
    assert settings["environment"] == {}
    assert "volumes" not in settings and "mounts" not in settings and "privileged" not in settings
    assert settings["tmpfs"] == {"/tmp": f"rw,nosuid,nodev,noexec,size={policy.scratch_mib}m,mode=1777"}
    assert settings["mem_limit"] == settings["memswap_limit"] == f"{policy.memory_mib + SENTRY_MEMORY_MIB}m"
    assert settings["nano_cpus"] == int(policy.cpus * 1e9)
    assert settings["labels"][SERVICE_LABEL] == "1" and settings["labels"]["owner"] == "me"
    assert {u["Name"] for u in settings["ulimits"]} == {"nofile", "fsize", "core"}


def test_runc_only_when_the_policy_says_so(policies: dict[str, Policy]) -> None:
    trusted = policies["default"].model_copy(update={"runtime": "runc"})
    assert container_settings(trusted, "img", {})["runtime"] == "runc"
