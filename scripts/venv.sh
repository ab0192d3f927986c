# Sourced by scripts/install and scripts/test: the one way both find a Python and make the
# virtual environment syncd goes into. Never pip into the Python itself: Debian's, Ubuntu's and
# Fedora's are externally managed (PEP 668) and refuse it.
#
#   ensure_venv DIR   DIR is a working venv of Python >= 3.11 afterwards (an existing one is
#                     kept), or the script has exited 1 with one line saying what is missing.
# The Python is $PYTHON, else python3 from PATH. Messages start with $script_name.

ensure_venv() {
  local dir=$1 python=${PYTHON:-python3}
  if [ -f "$dir/pyvenv.cfg" ] && "$dir/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    return 0
  fi
  if [ -e "$dir" ] && [ ! -f "$dir/pyvenv.cfg" ] && [ -n "$(ls -A "$dir")" ]; then
    venv_fail "$dir exists and is not a virtual environment; move it away and run this again"
  fi
  command -v "$python" >/dev/null || venv_fail "$python not found; install Python >= 3.11 (or set PYTHON=/path/to/python3)"
  local version
  version=$("$python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))') \
    || venv_fail "$python does not run; set PYTHON=/path/to/python3 (>= 3.11)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || venv_fail "$python is Python $version; syncd needs Python >= 3.11 (set PYTHON=/path/to/python3.11 or newer)"
  # Debian and Ubuntu ship venv's ensurepip in a separate package; `-m venv` alone would fail
  # with a paragraph after creating half a directory.
  "$python" -c 'import venv, ensurepip' 2>/dev/null \
    || venv_fail "$python (Python $version) cannot create a virtual environment: venv/ensurepip is missing (Debian/Ubuntu: apt install python3-venv)"
  # --clear: a venv left by a Python that is gone or too old is rebuilt, not patched.
  "$python" -m venv --clear "$dir" || venv_fail "$python -m venv $dir failed (see above)"
}

venv_fail() {
  echo "$script_name: $1" >&2
  exit 1
}
