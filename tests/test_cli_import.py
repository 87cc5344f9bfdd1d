"""`facenet --help` stays fast: building the parser imports no heavy library (issue 12, item 21)."""

import subprocess
import sys


def test_building_the_cli_parser_does_not_import_torch():
    code = (
        "import sys, facenet.cli; facenet.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'onnxruntime', 'faiss', 'fastapi', 'uvicorn') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"importing the CLI loaded {out.strip()}; import them inside the commands"
