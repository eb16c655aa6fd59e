# Flake checks: the package build (its check phase runs `cargo test`), clippy with warnings
# denied, rustfmt, nixfmt and shellcheck. `nixfmt` is the only check of the Nix files' layout:
# CI on Debian (tests/nix/ci.sh) has no nixfmt and checks only its width of 100.
{
  pkgs,
  package,
}:
let
  inherit (pkgs) lib;
  fs = lib.fileset;
  rustFiles = fs.toSource {
    root = ../.;
    fileset = fs.fileFilter (f: f.hasExt "rs" || f.name == "rustfmt.toml") ../.;
  };
  nixFiles = fs.toSource {
    root = ../.;
    fileset = fs.fileFilter (f: f.hasExt "nix") ../.;
  };
  shellFiles = fs.toSource {
    root = ../.;
    fileset = fs.fileFilter (f: f.hasExt "sh") ../tests/nix;
  };
  # A check that runs `script` with `tools` and succeeds when it does.
  check =
    name: tools: script:
    pkgs.runCommand "gitlab-runner-tart-driver-${name}" { nativeBuildInputs = tools; } ''
      ${script}
      mkdir -p $out
    '';
in
{
  inherit package;

  clippy = package.overrideAttrs (old: {
    pname = "${old.pname}-clippy";
    nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
    buildPhase = ''
      runHook preBuild
      cargo clippy --workspace --all-targets --features e2e --offline -- -D warnings
      runHook postBuild
    '';
    doCheck = false;
    postInstall = "";
    installPhase = ''
      runHook preInstall
      mkdir -p $out
      runHook postInstall
    '';
  });

  rustfmt = check "rustfmt" [ pkgs.rustfmt ] ''
    cd ${rustFiles}
    find . -name '*.rs' -not -path './target/*' -print0 \
      | xargs -0 rustfmt --check --edition 2021
  '';

  nixfmt = check "nixfmt" [ pkgs.nixfmt ] ''
    cd ${nixFiles}
    find . -name '*.nix' -print0 | xargs -0 nixfmt --check
  '';

  shellcheck = check "shellcheck" [ pkgs.shellcheck ] ''
    cd ${shellFiles}
    find . -name '*.sh' -print0 | xargs -0 shellcheck
  '';
}
