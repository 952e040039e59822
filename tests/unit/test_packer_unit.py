"""Pure parts of the Packer builder and AMI code: machine-readable parsing, version check, variables, labels,
one-line errors, gc ordering. No packer, no daemon, no AWS."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bakery import ami, packer
from bakery.errors import EnvironmentFailure, InputError
from bakery.ledger import Event
from bakery.model import LABEL_BUILD_TAG, LABEL_FINGERPRINT, LABEL_NAME, LABEL_VERSION, ImageKey, ImageSpec, Parent, Recipe

# Real output of `packer build -machine-readable` (Packer 1.6.6), docker builder, success.
DOCKER_OK = """\
1795735455,,ui,say,==> docker.img: Creating a temporary directory for sharing data...
1795735455,,ui,message,    docker.img: Run command: docker run -v /root/.packer.d/tmp85030293:/packer-files -d -i -t --entrypoint=/bin/sh -- base:1
1795735457,,ui,message,    docker.img: Container ID: 319b5705d077ef912f1a437a00e5e75794cc84f8c383b93c2b545216d12193d4
1795735457,,ui,message,    docker.img: hello%!(PACKER_COMMA) world
1795735458,,ui,message,    docker.img: Image ID: sha256:f204be67c089dc7a8631dc5c6759f01e84755bac41a48b06a49bbf8e1e6f69fc
1795735459,docker.img,artifact-count,1
1795735459,docker.img,artifact,0,builder-id,packer.post-processor.docker-import
1795735459,docker.img,artifact,0,id,sha256:f204be67c089dc7a8631dc5c6759f01e84755bac41a48b06a49bbf8e1e6f69fc
1795735459,docker.img,artifact,0,string,Imported Docker image: sha256:f204be67c089dc7a8631dc5c6759f01e84755bac41a48b06a49bbf8e1e6f69fc
1795735459,docker.img,artifact,0,files-count,0
1795735459,docker.img,artifact,0,end
"""

# Failing shell provisioner.
DOCKER_FAIL = """\
1795735465,,ui,message,    docker.img: Container ID: ab99d227c97adfa72638c50d7daa3b20b7ca668178d39ceb2cb79a9eadc7ec0f
1795735466,,ui,error,Build 'docker.img' errored after 886 milliseconds 894 microseconds: Script exited with non-zero exit status: 7.Allowed exit codes are: [0]
1795735466,,error-count,1
1795735466,,ui,error,\\n==> Some builds didn't complete successfully and had errors:
1795735466,docker.img,error,Script exited with non-zero exit status: 7.Allowed exit codes are: [0]
1795735466,,ui,error,--> docker.img: Script exited with non-zero exit status: 7.Allowed exit codes are: [0]
"""

# amazon-ebs with ami_regions: one artifact id listing every region.
AMI_OK = """\
1795735700,amazon-ebs.base,artifact-count,1
1795735700,amazon-ebs.base,artifact,0,builder-id,mitchellh.amazonebs
1795735700,amazon-ebs.base,artifact,0,id,eu-west-1:ami-0b1%!(PACKER_COMMA)us-east-1:ami-0a1
1795735700,amazon-ebs.base,artifact,0,string,AMIs were created:\\neu-west-1: ami-0b1\\nus-east-1: ami-0a1\\n
1795735700,amazon-ebs.base,artifact,0,end
"""

SYNTAX_ERROR = """Error: Invalid expression

  on debian.pkr.hcl line 7, in locals:
   7:   broken =

Expected the start of an expression, but found an invalid expression token.
"""


def test_docker_artifact_and_container_ids_are_parsed() -> None:
    out = packer.parse_machine_readable(DOCKER_OK)
    (art,) = out.artifacts
    assert art.target == "docker.img"
    assert art.id == "sha256:f204be67c089dc7a8631dc5c6759f01e84755bac41a48b06a49bbf8e1e6f69fc"
    assert art.builder_id == "packer.post-processor.docker-import"
    assert out.container_ids == ["319b5705d077ef912f1a437a00e5e75794cc84f8c383b93c2b545216d12193d4"]
    assert "    docker.img: hello, world" in out.ui  # commas unescaped
    assert out.errors == []


def test_failing_build_keeps_the_targeted_error_once() -> None:
    out = packer.parse_machine_readable(DOCKER_FAIL)
    assert out.artifacts == []
    assert out.errors == ["docker.img: Script exited with non-zero exit status: 7.Allowed exit codes are: [0]"]
    assert out.container_ids == ["ab99d227c97adfa72638c50d7daa3b20b7ca668178d39ceb2cb79a9eadc7ec0f"]


def test_template_error_without_target_comes_from_the_ui_line() -> None:
    line = "1795735465,,ui,error,Error: Invalid expression\\n\\n  on bad/t.pkr.hcl line 1%!(PACKER_COMMA) in x\n"
    assert packer.parse_machine_readable(line).errors == ["Error: Invalid expression"]


def test_ami_artifact_gives_an_ami_per_region() -> None:
    (art,) = packer.parse_machine_readable(AMI_OK).artifacts
    assert packer.ami_ids(art.id) == {"eu-west-1": "ami-0b1", "us-east-1": "ami-0a1"}
    assert art.string.startswith("AMIs were created:\neu-west-1: ami-0b1")


def test_garbage_and_partial_lines_are_ignored() -> None:
    out = packer.parse_machine_readable(["", "not,machine", "abc,x,ui,say,hi", "12,"])
    assert out.artifacts == [] and out.errors == [] and out.ui == []


@pytest.mark.parametrize("text,expected", [("Packer v1.6.6\n", "1.6.6"), ("Packer v1.9.4\n\nYour version is out of date", "1.9.4"),
                                           ("1.10.0", "1.10.0")])
def test_supported_versions(text: str, expected: str) -> None:
    assert packer.check_version(text) == expected


@pytest.mark.parametrize("text", ["Packer v1.5.6", "Packer v0.12.3", "no version here"])
def test_old_or_unreadable_versions_are_refused_with_exit_3(text: str) -> None:
    with pytest.raises(EnvironmentFailure) as info:
        packer.check_version(text, "packer")
    assert info.value.exit_code == 3
    assert "packer" in str(info.value)


def test_label_changes_are_quoted_the_dockerfile_way() -> None:
    changes = packer.label_changes({"b": 'say "hi"', "a": "x y", "c": "back\\slash"})
    assert changes == ['LABEL a="x y"', 'LABEL b="say \\"hi\\""', 'LABEL c="back\\\\slash"']


def test_ami_tags_come_from_the_labels() -> None:
    labels = {LABEL_NAME: "base", LABEL_VERSION: "12", LABEL_FINGERPRINT: "sha256:ab", LABEL_BUILD_TAG: "12-1",
              "other": "x"}
    assert packer.ami_tags(labels) == {"bakery:name": "base", "bakery:version": "12",
                                       "bakery:fingerprint": "sha256:ab", "bakery:build-tag": "12-1"}


@pytest.mark.parametrize("ref,expected", [("127.0.0.1:5001/ns/base:12-1", ("127.0.0.1:5001/ns/base", "12-1")),
                                          ("127.0.0.1:5001/ns/base", ("127.0.0.1:5001/ns/base", "latest")),
                                          ("base:12", ("base", "12"))])
def test_split_image_tag(ref: str, expected: tuple[str, str]) -> None:
    assert packer.split_image_tag(ref) == expected


def _recipe(files: dict[str, str], packer_settings: dict | None = None) -> Recipe:
    spec = ImageSpec(key=ImageKey("img", "1"), source_file="base-images/img.yaml", template="tpl", builder="packer",
                     parent=Parent("upstream", "docker.io/library/debian:bookworm-slim"), variables={}, tags=(),
                     packer=packer_settings)
    return Recipe(spec=spec, directory=Path("/nonexistent"), files={k: v.encode() for k, v in files.items()},
                  recipe_digest="sha256:0")


def test_declared_variables_and_builder_kind() -> None:
    hcl = 'variable "bakery_parent" {\n  type = string\n}\n  variable "x-y" {}\nsource "docker" "img" {}\n'
    r = _recipe({"img.pkr.hcl": hcl, "img.pkrvars.hcl": 'variable "not_me" {}'})
    assert packer.declared_variables(r.files) == {"bakery_parent", "x-y"}
    assert packer.builder_kind(r) == "docker"
    assert packer.builder_kind(_recipe({"a.pkr.hcl": hcl}, {"kind": "amazon-ebs"})) == "amazon-ebs"
    assert packer.template_label(r) == "templates/tpl/img.pkr.hcl.j2"


def test_unknown_or_ambiguous_builder_is_bad_input() -> None:
    with pytest.raises(InputError, match=r"base-images/img.yaml: packer.kind: 'qemu' is not supported"):
        packer.builder_kind(_recipe({"a.pkr.hcl": ""}, {"kind": "qemu"}))
    two = 'source "docker" "a" {}\nsource "amazon-ebs" "b" {}\n'
    with pytest.raises(InputError, match="cannot tell the Packer builder .sources: amazon-ebs, docker."):
        packer.builder_kind(_recipe({"a.pkr.hcl": two}))


def test_packer_errors_become_one_line_naming_the_template() -> None:
    r = _recipe({"debian.pkr.hcl": ""})
    msg = packer._one_line_error(r, SYNTAX_ERROR, "packer validate")
    assert msg == ("templates/tpl/debian.pkr.hcl.j2: packer validate: Error: Invalid expression (line 7): "
                   "Expected the start of an expression, but found an invalid expression token.")
    unset = 'Error: Unset variable "greeting"\n\nA used variable must be set or have a default value; see\nhttps://packer.io/docs/configuration/from-1.5/syntax for details.\n'
    assert packer._one_line_error(r, unset, "packer validate") == (
        'templates/tpl/debian.pkr.hcl.j2: packer validate: Error: Unset variable "greeting": '
        'A used variable must be set or have a default value; see')
    # Packer 1.6 cannot quote a rendered file's line: the reason comes after its filler
    attr = ('Error: Unsupported attribute\n\n  on debian.pkr.hcl line 23:\n  (source code not available)\n\n'
            'This object does not have an attribute named "nope".\n')
    assert packer._one_line_error(r, attr, "packer validate") == (
        'templates/tpl/debian.pkr.hcl.j2: packer validate: Error: Unsupported attribute (line 23): '
        'This object does not have an attribute named "nope".')


def test_origin_round_trip_and_bad_reference() -> None:
    assert ami.parse_origin(ami.origin("eu-west-1", "ami-1")) == ("eu-west-1", "ami-1")
    assert ami.is_ami_digest("ami:us-east-1:ami-1") and not ami.is_ami_digest("sha256:ab")
    with pytest.raises(InputError):
        ami.parse_origin("sha256:abc")


def test_source_filter_from_the_definition() -> None:
    spec = _recipe({}, {"kind": "amazon-ebs", "source_ami_filter": {
        "owners": "136693071363", "filters": {"name": "debian-12-amd64-*", "architecture": ["x86_64", "arm64"]}}}).spec
    owners, filters = ami.source_filter(spec)
    assert owners == ["136693071363"]
    assert filters == [{"Name": "architecture", "Values": ["x86_64", "arm64"]},
                       {"Name": "name", "Values": ["debian-12-amd64-*"]}]
    with pytest.raises(InputError, match="base-images/img.yaml: packer.source_ami_filter"):
        ami.source_filter(_recipe({}, {"kind": "amazon-ebs"}).spec)


def _ev(kind: str, digest: str, env: str, minute: int, **details) -> Event:
    return Event(kind=kind, image="img:1", digest=digest, build_tag=digest[-1], from_env=None, to_env=env,
                 actor="t", time=dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.timezone.utc), details=details)


def test_rollback_target_skips_builds_rolled_back_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one rollback (promote.rollback_candidates) reads AMI records too, including those written before
    issue 9 (``rolled_back_from`` instead of ``previous_digest``)."""
    from bakery.promote import rollback_candidates

    events = [_ev("promote", "ami:r:a", "staging", 1), _ev("promote", "ami:r:b", "staging", 2),
              _ev("promote", "ami:r:c", "staging", 3),
              _ev("rollback", "ami:r:b", "staging", 4, rolled_back_from="ami:r:c")]
    monkeypatch.setattr(ami, "_moves", lambda project, image, env: list(events))
    assert ami.current_ami(None, "img:1", "staging").origin == "ami:r:b"  # type: ignore[arg-type]
    assert rollback_candidates(events, "img:1", "staging", "ami:r:b")[0] == "ami:r:a"
    events.append(_ev("promote", "ami:r:d", "staging", 5))
    assert rollback_candidates(events, "img:1", "staging", "ami:r:d")[0] == "ami:r:b"
    del events[1:]
    assert rollback_candidates(events, "img:1", "staging", "ami:r:a") == []


def test_gc_arrival_order_counts_each_build_once() -> None:
    from bakery.ledger import arrival_order

    events = [_ev("publish", "ami:r:a", "dev", 1), _ev("gate", "ami:r:x", "dev", 2),
              _ev("publish", "ami:r:b", "dev", 3), _ev("rollback", "ami:r:a", "dev", 4)]
    assert arrival_order(events) == {"img:1": ["ami:r:a", "ami:r:b"]}
