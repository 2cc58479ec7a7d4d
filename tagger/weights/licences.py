"""The licences each family's authors state for their released weights and for their code, with where it is said.

An imported checkpoint records its family's entry (weights.importing), so the licence travels with the file and
with everything trained or averaged from it. Each source names the file that was read, at the commit read; only
CED states a licence for its weights apart from the code's (docs/models.md, "Licences").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyLicences:
    family: str
    weights: str  # SPDX identifier of what the authors state for the released weights
    code: str  # SPDX identifier of the official code's licence
    source: str  # the files read for both
    note: str = ""


def _github(repo: str, commit: str, path: str = "LICENSE") -> str:
    return f"https://github.com/{repo}/blob/{commit}/{path}"


_SAME = "the weights are released with the code and the authors state no other licence for them"

LICENCES: tuple[FamilyLicences, ...] = (
    FamilyLicences("ast", "BSD-3-Clause", "BSD-3-Clause",
                   _github("YuanGongND/ast", "31088be8a3f6ef96416145c4b8d43c81f99eba7a"), _SAME),
    FamilyLicences("passt", "Apache-2.0", "Apache-2.0",
                   _github("kkoutini/PaSST", "2a5c818afcc2a215b2a1aaf1ed8be71f89d43201"), _SAME),
    FamilyLicences("htsat", "MIT", "MIT",
                   _github("RetroCirce/HTS-Audio-Transformer", "2e29471fce7e770edeaaa64a41908bf234844fc5"), _SAME),
    FamilyLicences("psla", "BSD-3-Clause", "BSD-3-Clause",
                   _github("YuanGongND/psla", "76aedd19ad3123be9c5d002809575955683aaade"), _SAME),
    FamilyLicences("panns", "MIT", "MIT",
                   _github("qiuqiangkong/audioset_tagging_cnn", "d2f4b8c18eab44737fcc0de1248ae21eb43f6aa4",
                           "LICENSE.MIT"),
                   _SAME + " (the files are on Zenodo record 3987831, whose own licence field was not read)"),
    FamilyLicences("efficientat", "MIT", "MIT",
                   _github("fschmid56/EfficientAT", "a425fdce92572e602a1d5634799bd9f1f2efa806")
                   + " (the same text ships beside the mn04 weights as LICENSE_EfficientAT_MIT)", _SAME),
    FamilyLicences("ced", "Apache-2.0", "GPL-3.0",
                   "weights: the model cards https://huggingface.co/mispeech/ced-tiny, -mini, -small, -base "
                   "(license: apache-2.0); code: "
                   + _github("RicherMans/CED", "60a0f54214ea619265e16ee257925158be2675fd"),
                   "the code is GPL-3.0 but the authors' model cards put the weights under Apache-2.0; the README "
                   "links the same models on Zenodo (record 8275347), whose own licence field was not read"),
)

_BY_FAMILY = {entry.family: entry for entry in LICENCES}


def family_licences(family: str) -> FamilyLicences:
    """The family's entry; a family missing from the table is recorded as unknown rather than guessed."""
    entry = _BY_FAMILY.get(family)
    if entry is None:
        return FamilyLicences(family, "unknown", "unknown", "not in tagger's table (tagger/weights/licences.py)")
    return entry


def licence_record(family: str) -> dict[str, str]:
    """The entries an imported checkpoint's "source" keeps about its licences."""
    entry = family_licences(family)
    return {"licence": entry.weights, "code_licence": entry.code, "licence_source": entry.source}
