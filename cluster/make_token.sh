#!/usr/bin/env bash
# Make the Ray cluster token file if there is none, the way Ray reads it; never prints the token.
#
#   cluster/make_token.sh            # RAY_AUTH_TOKEN_PATH if set, else ~/.ray/auth_token
#   cluster/make_token.sh PATH       # or this file
#
# With RAY_AUTH_MODE=token, Ray 2.60 looks for the token in RAY_AUTH_TOKEN (the value), then the file
# in RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. `ray start` does not make one (it passes
# create_token_if_missing=False), so every node needs the file before it starts: aws.yaml file-mounts
# ~/.ray/auth_token onto each node, kuberay.yaml mounts it from a Secret, local.sh calls this.
#
# The token is Ray's own format (ray/_private/authentication/authentication_token_generator.py:
# secrets.token_hex(32), 64 hex characters, no newline). The file is written 0600 in a 0700 folder
# and only moved into place when complete; an existing non-empty file is kept (its permissions are
# tightened to 0600). Why not `ray get-auth-token --generate`: it writes ~/.ray/auth_token whatever
# RAY_AUTH_TOKEN_PATH says, with the umask's permissions (0644 by default), and prints the token.
#
# local.sh sources this file for ensure_token; run on its own, it makes the token and exits.

ensure_token() {  # [PATH]: make the token file if missing or empty; print where it is, never the token
  local path=${1:-${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}}
  if [[ -z "${1:-}" && -n "${RAY_AUTH_TOKEN:-}" ]]; then
    echo "token: RAY_AUTH_TOKEN is set and Ray uses it before any file; no file made"
    return 0
  fi
  if [[ -s "$path" ]]; then
    chmod go-rwx "$path"
    echo "token file: $path (kept)"
    return 0
  fi
  local dir tmp
  dir=$(dirname "$path")
  (umask 077 && mkdir -p "$dir")
  tmp=$(mktemp "$dir/.auth_token.XXXXXX")   # mktemp makes it 0600
  if ! od -An -v -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp" || [[ $(wc -c <"$tmp") -ne 64 ]]; then
    rm -f "$tmp"
    echo "make_token: could not read 32 random bytes from /dev/urandom" >&2
    return 1
  fi
  chmod 600 "$tmp"
  if [[ -e "$path" ]]; then
    mv -f "$tmp" "$path"                      # an empty file: Ray would refuse it, replace it
  elif ! ln "$tmp" "$path" 2>/dev/null; then  # no clobbering a token another process just made
    rm -f "$tmp"
    echo "token file: $path (kept)"
    return 0
  fi
  rm -f "$tmp"
  echo "token file: $path (new, 0600)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  ensure_token "$@"
fi
