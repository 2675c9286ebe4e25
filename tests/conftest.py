"""Fixtures shared by every test package (a provisioned site and a real Mosquitto broker), and the
``integration`` mark that keeps ``make check`` quick.

``make check`` runs ``pytest -m "not integration and not slow"``: the tests that start no broker,
no database server and no subprocess. The mark is given here, at collection, rather than in each
module: a test is ``integration`` when it uses a fixture that starts a real service or runs a
program, is the PostgreSQL half of a catalog test, lives in a module whose every test runs the
unit or the receiver as a process, or spawns a program itself (its body names ``subprocess``,
``Popen``, ``make_unit``, ... or it is listed in ``_SPAWNING_TESTS`` because a helper does it).
``make test`` runs everything, marked or not.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Final

import pytest

pytest_plugins = ["tests.support.mosquitto", "tests.support.dashboard", "tests.support.seaweedfs"]

_TESTS: Final = Path(__file__).resolve().parent

# Fixtures that start a service or run a program (directly or through a fixture they use).
_INTEGRATION_FIXTURES: Final = frozenset(
    {
        # tests/support/mosquitto.py: a real Mosquitto, and MQTT clients connected to it
        "broker",
        "broker_out",
        "clients",
        "make_client",
        # tests/server/conftest.py: a fresh database on the PostgreSQL server
        "postgres_url",
        # tests/support/dashboard.py: Chromium, and the dashboard as a process
        "chromium",
        "board",
        "fresh_board",
        # tests/support/seaweedfs.py: a real SeaweedFS S3 server, and a bucket on it
        "seaweedfs",
        "seaweedfs_server",
        # tests/daemon/hardware/conftest.py: espeak-ng and sox speak the test sentence, once
        # (speech_raw and the microphone fixtures build on it)
        "speech_wav",
    }
)

# Fixtures parametrised over database kinds: the "postgresql" half needs the server.
_DATABASE_FIXTURES: Final = ("db_url",)
# Fixtures parametrised over store backends: the "s3" half needs SeaweedFS.
_STORE_FIXTURES: Final = ("backend",)

# Modules whose every test runs the daemon or the receiver (``painav``) as a process.
_SPAWNING_MODULES: Final = frozenset(
    {
        "daemon/test_unit_e2e.py",
        "daemon/test_unit_faults.py",
        "daemon/test_unit_on_one_host.py",
        "daemon/test_unit_sandboxed.py",
        "server/test_receiver_e2e.py",
        "server/test_receiver_faults.py",
    }
)

# Words in a test's own body that mean it runs a program.
_SPAWNING_WORDS: Final = (
    "subprocess",
    "Popen",
    "make_unit",
    "start_receiver",
    "receiver_process",
    "sys.executable",
    "os.fork",
)

# Tests that run a program through a helper of their module (age, minisign, openssl, curl,
# systemd-analyze, bash, a child Python killed at a crash point), found by running the suite
# with subprocess creation logged.
_SPAWNING_TESTS: Final[dict[str, frozenset[str]]] = {
    "daemon/hardware/test_factory.py": frozenset(
        {"test_importing_the_factory_loads_no_backend_library"}
    ),
    "daemon/hardware/test_pyaudio_mic.py": frozenset(
        {"test_messages_are_routed_under_memory_deny_write_execute"}
    ),
    "daemon/test_clipserver.py": frozenset({"test_curl_fetches_with_ranges"}),
    "daemon/test_clipwriter.py": frozenset({"test_a_clip_decrypts_with_age_and_plays"}),
    "daemon/test_clock.py": frozenset(
        {
            "test_chrony_answers_when_the_file_is_missing",
            "test_chrony_not_synchronised_or_unreachable_is_no",
            "test_in_the_units_sandbox_adjtimex_fails_and_the_file_still_answers",
            "test_in_the_units_sandbox_chronyc_can_be_asked",
        }
    ),
    "daemon/test_outbox.py": frozenset(
        {
            "test_a_crash_at_each_step_of_seal_recovers",
            "test_sigkill_while_recording_leaves_a_reported_abort",
        }
    ),
    "protocol/test_envelope.py": frozenset(
        {
            "test_age_decrypts_ours",
            "test_random_write_and_read_sizes_interoperate",
            "test_several_recipients_each_decrypt",
            "test_we_decrypt_age",
        }
    ),
    "protocol/test_signing.py": frozenset(
        {
            "test_legacy_signatures_verify_but_not_as_clips",
            "test_minisign_rejects_what_we_reject",
            "test_minisign_signs_with_keys_we_saved",
            "test_minisign_verifies_our_signatures",
            "test_we_load_a_key_minisign_encrypted",
            "test_we_verify_minisign_signatures_and_load_its_keys",
        }
    ),
    "provisioning/test_site_and_devices.py": frozenset(
        {
            "test_an_added_receiver_has_its_own_certificates_and_no_shared_key",
            "test_revoking_a_receiver_lists_both_its_certificates_and_takes_it_out",
            "test_bundle_holds_exactly_what_the_unit_needs",
            "test_re_adding_a_unit_issues_new_keys_and_revokes_the_old_cert",
            "test_revocation_updates_registry_and_crl",
        }
    ),
    "server/test_fleet.py": frozenset({"test_reconcile_prints_no_alembic_lines"}),
    "server/test_store.py": frozenset(
        {
            "test_death_just_before_the_commit_leaves_nothing_under_the_key",
            "test_sigkill_while_copying_leaves_nothing_under_the_key",
        }
    ),
    "test_cli.py": frozenset({"test_demo_runs_end_to_end_and_keeps_its_files"}),
    "test_firmware_config.py": frozenset(
        {
            "test_alsa_loads_asound_conf_and_resolves_the_named_card",
            "test_data_partition_mount_unit_loads_in_systemd",
            "test_first_boot_fstab_merge_keeps_the_image_devices",
            "test_first_boot_script_accepts_a_well_formed_bundle",
            "test_first_boot_script_is_valid_bash",
            "test_first_boot_script_rejects_a_file_that_is_not_a_tar",
            "test_first_boot_script_rejects_a_malformed_bundle",
            "test_raspi_config_can_turn_the_first_boots_overlay_off_and_on",
            "test_raspi_config_recognises_the_write_protected_boot_partition",
            "test_the_first_boot_refuses_an_overlay_raspi_config_cannot_turn_off",
            "test_time_wait_sync_drop_in_loads_in_systemd",
            "test_user_data_parses_and_agrees_with_pyyaml",
        }
    ),
    "test_systemd_units.py": frozenset(
        {
            "test_exposure_is_within_the_limit",
            "test_sysusers_creates_the_hospital_accounts",
            "test_unit_verifies_without_a_single_message",
            "test_verify_harness_catches_a_broken_unit",
        }
    ),
}


def _needs_integration(item: pytest.Item) -> bool:
    if not isinstance(item, pytest.Function):
        return False
    if _INTEGRATION_FIXTURES.intersection(item.fixturenames):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(
        callspec.params.get(name) == "postgresql" for name in _DATABASE_FIXTURES
    ):
        return True
    if callspec is not None and any(callspec.params.get(name) == "s3" for name in _STORE_FIXTURES):
        return True
    try:
        module = item.path.relative_to(_TESTS).as_posix()
    except ValueError:
        return False
    if module in _SPAWNING_MODULES:
        return True
    if item.originalname in _SPAWNING_TESTS.get(module, frozenset()):
        return True
    try:
        body = inspect.getsource(item.function)
    except (OSError, TypeError):
        return False
    return any(word in body for word in _SPAWNING_WORDS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_integration(item):
            item.add_marker(pytest.mark.integration)
