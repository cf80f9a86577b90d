# Sourced by scripts/serve, scripts/test and .ci/run: installs the Debian/Ubuntu packages
# that confer's build and tests need, when they are missing. Says what it installs.

# Packages the build needs (cmake builds the bundled libopus).
CONFER_BUILD_PACKAGES=(build-essential pkg-config cmake)
# Packages the tests need on top: opus-tools (opusinfo, opusdec) checks recordings; janus
# (AudioBridge) is the engine `confer bench --target janus` compares with; sip-tester
# (sipp, with its G.711 and RFC 2833 pcaps) and baresip (headless, Opus and G.711) call
# into confer over SIP; postgresql is the archive's second database (its tests start
# their own throwaway cluster: no service is needed).
CONFER_TEST_PACKAGES=(opus-tools janus sip-tester baresip postgresql)

confer_ensure_packages() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "confer: installing missing system packages: ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
