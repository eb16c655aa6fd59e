# Flake checks: the package build (its check phase runs `cargo test`), clippy with warnings
# denied, rustfmt, nixfmt and shellcheck.
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

  rustfmt =
    pkgs.runCommand "gitlab-runner-tart-driver-rustfmt" { nativeBuildInputs = [ pkgs.rustfmt ]; }
      ''
    cd ${rustFiles}
    find . -name '*.rs' -not -path './target/*' -print0 \
      | xargs -0 rustfmt --check --edition 2021
    mkdir -p $out
  '';

  nixfmt =
    pkgs.runCommand "gitlab-runner-tart-driver-nixfmt" { nativeBuildInputs = [ pkgs.nixfmt ]; }
      ''
    cd ${nixFiles}
    find . -name '*.nix' -print0 | xargs -0 nixfmt --check
    mkdir -p $out
  '';

  shellcheck =
    pkgs.runCommand "gitlab-runner-tart-driver-shellcheck"
      { nativeBuildInputs = [ pkgs.shellcheck ]; }
      ''
    cd ${shellFiles}
    find . -name '*.sh' -print0 | xargs -0 shellcheck
    mkdir -p $out
  '';
}
