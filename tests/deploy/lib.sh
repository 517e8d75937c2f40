# Sourced by the deployment tests (package.sh, container.sh, install.sh).

# install_missing COMMAND:PACKAGE...: apt-get install the packages whose command is missing.
install_missing() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    ((${#need[@]})) || return 0
    echo "installing ${need[*]}" >&2
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}
