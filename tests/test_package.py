"""The package as pip builds it: the wheel holds automl with its shipped specs and licence files, and nothing of
tests, results or data; the version is the one automl/__init__.py writes."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import automl
from automl.spec import shipped_spec_names

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_package_and_its_specs_and_nothing_else(tmp_path):
    # Built from the tracked files only, as from a fresh clone (and without writing build/ into the checkout).
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    source = tmp_path / "src"
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"skin_automl-{automl.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"automl", f"skin_automl-{automl.__version__}.dist-info"}, top  # no tests/, results/, data
    specs = {Path(n).stem for n in names if n.startswith("automl/search_spaces/") and n.count("/") == 2}
    assert specs == set(shipped_spec_names()) and "quick" in specs
    assert "automl/search_spaces/portfolios/ham10000_cnn.yaml" in names
    assert "automl/dashboard/assets/dashboard.css" in names
    meta = f"skin_automl-{automl.__version__}.dist-info/"
    licences = {Path(n).name for n in names if n.startswith(meta) and Path(n).name in ("LICENSE", "NOTICE")}
    assert licences == {"LICENSE", "NOTICE"}
    metadata = zipfile.ZipFile(wheel).read(meta + "METADATA").decode()
    assert f"Version: {automl.__version__}\n" in metadata and "License: Apache-2.0" in metadata
    assert "automl = automl.cli:main" in zipfile.ZipFile(wheel).read(meta + "entry_points.txt").decode()
    assert not any(n.endswith((".npy", ".parquet", ".keras", ".jpg", ".png")) for n in names)
