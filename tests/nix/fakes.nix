# Stand-in derivations for evaluating the modules without nixpkgs: nothing is built, but
# every store path depends on what it was made from, as a real one does.
rec {
  fakeHash = name: builtins.substring 0 32 (builtins.hashString "sha256" name);
  # A placeholder derivation whose store path depends on `name` and `contents`, as a real
  # one's depends on its inputs (so that texts naming it change when its contents do).
  fakeDrvOf =
    name: contents:
    let
      self = {
        type = "derivation";
        inherit name;
        outPath = "/nix/store/${fakeHash (name + contents)}-${name}";
        drvPath = "/nix/store/${fakeHash "${name}${contents}.drv"}-${name}.drv";
        meta.mainProgram = name;
        outputs = [ "out" ];
        outputName = "out";
        out = self;
      };
    in
    self;
  fakeDrv = name: fakeDrvOf name "";
  # A file "written to the store", keeping its text so that tests can read and search it.
  textDrv = name: text: fakeDrvOf name text // { inherit text; };
}
