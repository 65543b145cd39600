"""Lay out ../shared/data/covid (real chest X-rays with clinical notes) as a
MIMIC-CXR-JPG release, so `ingest mimic` can read it: one study per image,
the notes as the FINDINGS of a report, symlinked images, gzipped CSVs.

    python covid_tree.py SHARED_COVID_DIR OUT_DIR
"""

import csv
import gzip
import sys
import textwrap
from pathlib import Path

CHEXPERT = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
            "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
            "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
METADATA = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
            "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
            "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]


def write_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def main(covid: Path, out: Path) -> None:
    patients: dict[str, int] = {}
    meta, split, labels = [], [], []
    with open(covid / "metadata.csv", newline="") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            subject = 10_000_000 + patients.setdefault(rec["patientid"], len(patients))
            study = 50_000_000 + i
            dicom = f"{i:08x}-0000000a-0000000b-0000000c-0000000d"
            d = out / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
            (d / f"s{study}").mkdir(parents=True, exist_ok=True)
            (d / f"s{study}" / f"{dicom}.jpg").symlink_to((covid / "images" / rec["filename"]).resolve())
            body = "\n".join(" " + line for line in textwrap.wrap(rec["clinical_notes"], 76))
            (d / f"s{study}.txt").write_text(f"{' ' * 33}FINAL REPORT\n FINDINGS:\n{body}\n")
            meta.append([dicom, str(subject), str(study), "", rec["view"], "0", "0", "", "", "", "", ""])
            split.append([dicom, str(study), str(subject), "train"])
            labels.append([str(subject), str(study)] + [""] * 14)
    write_gz(out / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA, meta)
    write_gz(out / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split)
    write_gz(out / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id"] + CHEXPERT, labels)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
