"""What a de-identification does: the profile and its options, checked once, named plainly.

The option names are ours (they go in the TOML config and on the command line); each maps to
a PS3.15 option, its code (CID 7050, coding scheme DCM) and a key of edge.deid.profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import EdgeError

PROFILES = ("basic",)
PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")


class DeidError(EdgeError):
    """A de-identification setting or input is wrong; the message says which and why."""


@dataclass(frozen=True)
class Option:
    name: str  # as written in the config and on the command line
    key: str  # edge.deid.profile option key ("" for options outside the table)
    code: str  # CID 7050 code value (DCM)
    meaning: str  # its code meaning
    help: str


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option(
            "retain-modified-dates",
            "dates",
            "113107",
            "Retain Longitudinal Temporal Information Modified Dates Option",
            "keep dates, shifted by a per-patient offset from the site secret",
        ),
        Option(
            "retain-device-identity",
            "device",
            "113109",
            "Retain Device Identity Option",
            "keep scanner serial number, station name and device identifiers",
        ),
        Option(
            "retain-uids",
            "uids",
            "113110",
            "Retain UIDs Option",
            "keep the original UIDs instead of keyed-hash replacements",
        ),
        Option(
            "clean-descriptors",
            "desc",
            "113105",
            "Clean Descriptors Option",
            "keep descriptions (study, series, specimen) with known identifiers masked",
        ),
        Option(
            "clean-structured-content",
            "struct",
            "113104",
            "Clean Structured Content Option",
            "keep specimen preparation and acquisition context, cleaned item by item",
        ),
        Option(
            "retain-patient-characteristics",
            "chars",
            "113108",
            "Retain Patient Characteristics Option",
            "keep sex, age, size and weight",
        ),
        Option(
            "keep-label-blanked",
            "",
            "113101",
            "Clean Pixel Data Option",
            "keep the label image with every pixel white (default: drop it)",
        ),
        Option(
            "retain-institution-identity",
            "inst",
            "113112",
            "Retain Institution Identity Option",
            "keep institution and department names",
        ),
    )
}


@dataclass(frozen=True)
class Policy:
    """A checked de-identification policy. Build it with `policy()`."""

    profile: str = "basic"
    options: frozenset[str] = frozenset()  # names from OPTIONS

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(OPTIONS[name].key for name in self.options)

    @property
    def uid_namespace(self) -> str:
        """Same policy, same new UIDs; another policy (other options), other UIDs."""
        return ":".join([self.profile, *sorted(self.options)])

    def has(self, name: str) -> bool:
        return name in self.options

    def codes(self) -> list[tuple[str, str]]:
        """(code value, meaning) of the profile and each option, in a stable order."""
        return [PROFILE_CODE] + [
            (OPTIONS[n].code, OPTIONS[n].meaning) for n in sorted(self.options, key=_order)
        ]


def _order(name: str) -> int:
    return list(OPTIONS).index(name)


def check_options(names: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
    """The option names, checked; DeidError naming `where` and the allowed names otherwise."""
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise DeidError(
            f"{where}: unknown de-identification option(s) {unknown}; allowed: {', '.join(OPTIONS)}"
        )
    return tuple(dict.fromkeys(names))


def check_profile(profile: str, where: str) -> str:
    if profile not in PROFILES:
        raise DeidError(
            f"{where}: unknown de-identification profile {profile!r}; allowed: "
            f"{', '.join(PROFILES)} (or empty for identified data)"
        )
    return profile


def policy(profile: str = "basic", options: tuple[str, ...] = (), where: str = "policy") -> Policy:
    return Policy(check_profile(profile, where), frozenset(check_options(options, where)))
