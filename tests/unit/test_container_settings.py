from __future__ import annotations

from sandbox.container import SENTRY_MEMORY_MIB, SERVICE_LABEL, SLOTS, container_settings
from sandbox.policy import Policy


def test_policy_becomes_a_locked_down_gvisor_container(policies: dict[str, Policy]) -> None:
    policy = policies["humaneval"]
    settings = container_settings(policy, "img:tag", {"owner": "me"})
    assert settings["runtime"] == "runsc"
    assert settings["network_mode"] == "none"
    assert settings["read_only"] is True
    # Root inside gVisor, but only with what switching every sample to a uid of its own needs.
    assert settings["user"] == "0:0"
    assert settings["cap_drop"] == ["ALL"] and sorted(settings["cap_add"]) == ["CHOWN", "KILL", "SETGID", "SETUID"]
    assert settings["security_opt"] == ["no-new-privileges"]
    assert settings["environment"] == {}
    assert "volumes" not in settings and "mounts" not in settings and "privileged" not in settings
    assert settings["tmpfs"]["/tmp"] == "rw,nosuid,nodev,noexec,size=1m,mode=0700"
    assert settings["tmpfs"]["/scratch/0"] == f"rw,nosuid,nodev,noexec,size={policy.scratch_mib}m,mode=0711"
    assert len(settings["tmpfs"]) == 1 + SLOTS
    assert settings["shm_size"] == f"{policy.shm_mib}m"
    assert settings["log_config"] == {"type": "none"}  # nothing reaches the host's disk through a log driver
    assert settings["mem_limit"] == settings["memswap_limit"] == f"{2 * policy.memory_mib * SLOTS + SENTRY_MEMORY_MIB}m"
    assert settings["nano_cpus"] == int(policy.cpus * 1e9)
    assert settings["labels"][SERVICE_LABEL] == "1" and settings["labels"]["owner"] == "me"
    assert {u["Name"] for u in settings["ulimits"]} == {"nofile", "fsize", "core"}


def test_runc_only_when_the_policy_says_so(policies: dict[str, Policy]) -> None:
    trusted = policies["default"].model_copy(update={"runtime": "runc"})
    assert container_settings(trusted, "img", {})["runtime"] == "runc"
