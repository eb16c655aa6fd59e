# flake.lock is consistent with flake.nix: lock format 7; the root node's inputs are exactly
# the flake's inputs; each github input is locked at a full revision with a narHash, and its
# `original` matches the declared URL; `follows` declarations are mirrored. Builtins only.
let
  flake = import ../../flake.nix;
  lock = builtins.fromJSON (builtins.readFile ../../flake.lock);
  inherit (builtins)
    all
    attrNames
    filter
    isInt
    length
    match
    ;
  inputs = flake.inputs;
  rootInputs = lock.nodes.${lock.root}.inputs;
  parseGithub =
    url:
    let
      m = match "github:([^/]+)/([^/?]+)(/([^?]+))?" url;
    in
    if m == null then
      null
    else
      {
        owner = builtins.elemAt m 0;
        repo = builtins.elemAt m 1;
        ref = builtins.elemAt m 3;
        type = "github";
      };
  urlOf = i: if builtins.isString i then i else i.url;
  nodeOf = name: lock.nodes.${rootInputs.${name}};
  expectedOriginal =
    name:
    let
      p = parseGithub (urlOf inputs.${name});
    in
    if p.ref == null then removeAttrs p [ "ref" ] else p;
  followsOf = i: if builtins.isAttrs i && i ? inputs then i.inputs else { };
  checks = {
    "lock version 7" = lock.version == 7;
    "root inputs are the flake's inputs" = attrNames rootInputs == attrNames inputs;
    "every input is a github URL" = all (n: parseGithub (urlOf inputs.${n}) != null) (
      attrNames inputs
    );
    "original matches the declared URL" = all (n: (nodeOf n).original == expectedOriginal n) (
      attrNames inputs
    );
    "locked: same repository, full rev, narHash, lastModified" = all (
      n:
      let
        l = (nodeOf n).locked;
        o = (nodeOf n).original;
      in
      l.type == "github"
      && l.owner == o.owner
      && l.repo == o.repo
      && match "[0-9a-f]{40}" l.rev != null
      && match "sha256-[A-Za-z0-9+/]{43}=" l.narHash != null
      && isInt l.lastModified
    ) (attrNames inputs);
    "follows are mirrored in the lock" = all (
      n:
      let
        f = followsOf inputs.${n};
        node = nodeOf n;
      in
      # Both directions: every declared follows is locked, and nothing else is.
      attrNames (node.inputs or { }) == attrNames f
      && all (i: node.inputs.${i} == [ f.${i}.follows ]) (attrNames f)
    ) (attrNames inputs);
    "no unreferenced nodes" =
      length (attrNames lock.nodes) == 1 + length (attrNames inputs);
    "pinned pair: nix-darwin-26.05 adda04f0 with nixpkgs-26.05-darwin 705e9929" =
      (nodeOf "nix-darwin").locked.rev == "adda04f0bf4819575b1978c2f8d78401b3c2be12"
      && (nodeOf "nixpkgs").locked.rev == "705e9929918b43bd7b715dc0a878ac870449bb03";
  };
  names = attrNames checks;
in
{
  failures = filter (n: !checks.${n}) names;
  passed = length (filter (n: checks.${n}) names);
}
