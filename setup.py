"""Build seqlstm._C from csrc/, with the CUDA kernels when CUDA is available.

SEQLSTM_CUDA=1 forces a CUDA build and fails without nvcc or a CUDA build of torch,
SEQLSTM_CUDA=0 forces a CPU-only build, and unset picks CUDA when both are present.
SEQLSTM_DEBUG=1 builds with -O0 -g. MAX_JOBS sets the number of parallel compile jobs
and TORCH_CUDA_ARCH_LIST the GPU architectures (default 9.0+PTX).

Build with `pip install --no-build-isolation .`: the extension links against the
torch that is installed, so pip must not build it against a fresh copy of torch in
an isolated environment.
"""

import glob
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from setuptools import setup


def find_cuda_home() -> None:
    """Point CUDA_HOME at the toolkit that contains nvcc and the CUDA headers.

    torch takes the parent of the folder of the nvcc on PATH as the toolkit, which is wrong
    where that nvcc is a link or wrapper script (/usr/local/bin/nvcc calling
    /usr/local/cuda-13.0/bin/nvcc), so the headers would not be found.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime_api.h").exists():
            os.environ["CUDA_HOME"] = str(home)
            return


find_cuda_home()
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME on import)

ROOT = Path(__file__).parent.resolve()


def use_cuda() -> bool:
    """Decide whether to build the CUDA kernels, from SEQLSTM_CUDA and what is installed."""
    request = os.environ.get("SEQLSTM_CUDA", "").strip()
    if request not in ("", "0", "1"):
        sys.exit(f"SEQLSTM_CUDA must be 0, 1 or unset, got {request!r}")
    if request == "0":
        return False
    missing = []
    if cpp_extension.CUDA_HOME is None:
        missing.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if torch.version.cuda is None:
        missing.append(f"the installed torch {torch.__version__} is a CPU-only build")
    if missing and request == "1":
        sys.exit("SEQLSTM_CUDA=1 but CUDA cannot be built: " + "; ".join(missing))
    if missing:
        print("seqlstm: building without CUDA: " + "; ".join(missing), file=sys.stderr)
    return not missing


def nvidia_include_dirs() -> list[str]:
    """Return the include folders of the nvidia-* wheels that torch's CUDA headers need."""
    folders = []
    for site in sys.path:
        folders += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted(set(folders))


def write_build_info(with_cuda: bool) -> None:
    """Record the torch version built against, so that import can detect a mismatch."""
    info = {"torch_version": torch.__version__, "cuda": with_cuda}
    (ROOT / "seqlstm" / "_build_info.json").write_text(json.dumps(info) + "\n")


def make_extension():
    with_cuda = use_cuda()
    write_build_info(with_cuda)
    debug = os.environ.get("SEQLSTM_DEBUG", "0") == "1"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/*.cpp"))
    optimize = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags = optimize + [
        "-std=c++20",  # torch 2.14's headers need C++20; 2.11's accept it.
        "-fopenmp",  # at::parallel_for runs its OpenMP loop only when compiled with it.
        # Lets GCC turn the selects of the CPU cell loops into vector blends; torch 2.14
        # itself is built with it. The code never enables floating-point traps.
        "-fno-trapping-math",
        f'-DSEQLSTM_TORCH_VERSION="{torch.__version__}"',
    ]
    extra_compile_args = {"cxx": cxx_flags}
    extension = cpp_extension.CppExtension
    include_dirs = []
    if with_cuda:
        extension = cpp_extension.CUDAExtension
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # The toolkit's own headers come first: the nvidia wheels carry partial copies
        # of some of them (cuda_runtime_api.h without crt/) that must not shadow them.
        include_dirs += [os.path.join(cpp_extension.CUDA_HOME, "include")]
        include_dirs += nvidia_include_dirs()
        cxx_flags.append("-DSEQLSTM_WITH_CUDA")
        extra_compile_args["nvcc"] = optimize + [
            "-std=c++20",
            "-DSEQLSTM_WITH_CUDA",
            "-lineinfo",  # Source lines in profiler output, at no run-time cost.
        ]
    return extension(
        name="seqlstm._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
