# Options of one runner (`services.gitlab-runner-tart.runners.<name>`), shared by the
# nix-darwin and the NixOS module. `defaultBackend` is `tart` on a Mac and `orchard` on Linux,
# where Tart cannot run.
{
  lib,
  defaultBackend,
}:
let
  inherit (lib) literalExpression mkOption types;
  pathOrStr = types.either types.path types.str;
  autoOr = t: types.nullOr (types.either t (types.enum [ "auto" ]));
in
{ name, ... }:
{
  options = {
    url = mkOption {
      type = types.strMatching "https?://.+";
      example = "https://gitlab.example.com";
      description = "URL of the GitLab instance.";
    };
    authenticationTokenFile = mkOption {
      type = pathOrStr;
      example = "/Users/ci/.config/gitlab-runner/mac-1.token";
      description = ''
        File holding the runner authentication token (`glrt-…`, from "New instance/group/
        project runner" in GitLab). Read by the runner's user each time the agent starts;
        it never enters the Nix store. Give a quoted absolute path: a path literal is
        copied to the store when the flake is, and a warning says so.
      '';
    };
    name = mkOption {
      type = types.str;
      default = name;
      defaultText = literalExpression "<attribute name>";
      description = "Runner name in config.toml (shown in GitLab).";
    };
    limit = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Maximum concurrent jobs of this runner; null means `concurrency`.";
    };
    environment = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "LANG=en_US.UTF-8" ];
      description = "`environment` of the `[[runners]]` entry (`NAME=value` job variables).";
    };
    buildsDir = mkOption {
      type = types.nullOr pathOrStr;
      default = null;
      example = "/Users/ci/tart-builds";
      description = "Host directory shared into the VMs for builds (driver `builds_dir`); null keeps builds inside the VM. Created at activation, owned by the user.";
    };
    cacheDir = mkOption {
      type = types.nullOr pathOrStr;
      default = null;
      example = "/Users/ci/tart-cache";
      description = "Host directory shared into the VMs for the runner cache (driver `cache_dir`). Created at activation, owned by the user.";
    };
    volumes = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/Users/ci/shared:/Volumes/shared:ro" ];
      description = "Extra shared directories, `host:guest[:ro]` (driver `volumes`). Missing host directories are created at activation.";
    };
    allowImages = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "^ghcr\\.io/cirruslabs/macos-.*$" ];
      description = "Regexes; when non-empty a job image must match one (driver `allow_images`).";
    };
    excludeImages = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Regexes of images that are refused (driver `exclude_images`).";
    };
    defaultImage = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest";
      description = "Image for jobs without `image:` (driver `default_image`).";
    };
    pullPolicy = mkOption {
      type = types.nullOr (
        types.enum [
          "always"
          "if-not-present"
          "never"
        ]
      );
      default = null;
      description = "Image pull policy (driver `pull_policy`).";
    };
    allowedPullPolicies = mkOption {
      type = types.listOf (
        types.enum [
          "always"
          "if-not-present"
          "never"
        ]
      );
      default = [ ];
      description = "Pull policies jobs may ask for (driver `allowed_pull_policies`).";
    };
    sshUser = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "admin";
      description = "User the driver logs in as in the guest (driver `ssh_username`).";
    };
    sshPasswordFile = mkOption {
      type = types.nullOr pathOrStr;
      default = null;
      description = "File holding the guest SSH password (driver `ssh_password_file`); keep it outside the store.";
    };
    sshKeyFile = mkOption {
      type = types.nullOr pathOrStr;
      default = null;
      description = "Private key for guest SSH (driver `ssh_key_file`).";
    };
    cpu = mkOption {
      type = autoOr types.ints.positive;
      default = null;
      description = "vCPUs per VM, or \"auto\" to split the host evenly over `concurrency` (driver `cpu`).";
    };
    memory = mkOption {
      type = autoOr types.ints.positive;
      default = null;
      description = "Memory per VM in MiB, or \"auto\" (driver `memory`).";
    };
    display = mkOption {
      type = types.nullOr (types.strMatching "[0-9]+x[0-9]+");
      default = null;
      example = "1920x1080";
      description = "VM display resolution (driver `display`).";
    };
    timeout = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Seconds allowed for a VM to boot and accept SSH (driver `timeout`).";
    };
    transport = mkOption {
      type = types.nullOr (
        types.enum [
          "ssh"
          "exec"
          "auto"
        ]
      );
      default = null;
      description = "How the driver runs commands in the guest (driver `transport`).";
    };
    settings = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      example = {
        macos_vm_limit = 2;
      };
      description = "Free-form keys of the driver's YAML config, merged over the typed options (snake_case driver names; the driver rejects unknown keys).";
    };
    extraConfig = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      example = {
        request_concurrency = 2;
        custom.prepare_exec_timeout = 1800;
      };
      description = "Free-form keys merged (deeply) into this runner's `[[runners]]` table of config.toml. `token` is refused: use `authenticationTokenFile`.";
    };
    warm = {
      pool = mkOption {
        type = types.ints.unsigned;
        default = 0;
        description = "VMs kept cloned and booted ahead of jobs, so a job skips the boot (driver `warm_pool`); 0 is off. On a Mac, the config agent fills the pool when it loads (at login and after a switch that changes the runner), and the gc agent's sweep pulls the warm images again and refills it.";
      };
      images = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "ghcr.io/cirruslabs/macos-sequoia-xcode:latest" ];
        description = "Images the warm pool boots (driver `warm_images`); empty means `defaultImage`.";
      };
      expiry = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Minutes a warm VM may wait for a job before it is replaced (driver `warm_expiry`; driver default 240).";
      };
    };
    backend = mkOption {
      type = types.enum [
        "tart"
        "orchard"
      ];
      default = defaultBackend;
      description = "Where this runner's jobs run: `tart`, VMs on this host, or `orchard`, VMs on the Macs of an Orchard fleet (driver `backend`).";
    };
    orchard = {
      url = mkOption {
        type = types.nullOr (types.strMatching "https?://.+");
        default = null;
        example = "https://orchard.example.com:6120";
        description = "Orchard controller URL, with its API prefix if any (driver `orchard.url`).";
      };
      serviceAccount = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "gitlab-runner";
        description = "Service account the driver logs in as; it needs the roles compute:read, compute:write (driver `orchard.service_account`).";
      };
      tokenFile = mkOption {
        type = types.nullOr pathOrStr;
        default = null;
        example = "/var/lib/gitlab-runner-tart/orchard.token";
        description = "File holding the service account's token, read by the driver at use; keep it outside the store, readable only by the runner's user (driver `orchard.token_file`).";
      };
      caFile = mkOption {
        type = types.nullOr pathOrStr;
        default = null;
        description = "PEM file with the controller's certificate or its CA, trusted instead of the system's roots (driver `orchard.ca_file`).";
      };
      caFingerprint = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "SHA-256 fingerprint of the controller's certificate, trusted instead of the system's roots (driver `orchard.ca_fingerprint`).";
      };
      labels = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          xcode = "16";
        };
        description = "Worker labels a job's VM needs (driver `orchard.labels`).";
      };
      resources = mkOption {
        type = types.attrsOf types.ints.positive;
        default = { };
        example = {
          "org.cirruslabs.tart-vms" = 1;
        };
        description = "Resources a job's VM takes from its worker; empty means the driver's default, one `org.cirruslabs.tart-vms` (driver `orchard.resources`).";
      };
      queueTimeout = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Seconds a job's VM may wait for a worker and its image (driver `orchard.queue_timeout`; driver default 3600).";
      };
      bootTimeout = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Seconds from `running` until SSH answers (driver `orchard.boot_timeout`; driver default: `timeout`).";
      };
      hostDirs = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          tools = "/opt/ci-tools";
        };
        description = "Worker directories shared read-only into every VM, by name; each must exist on every worker (driver `orchard.host_dirs`).";
      };
      namePrefix = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "First part of this runner's VM names on the controller (driver `orchard.name_prefix`; driver default `gl`).";
      };
      allowPlainHttp = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Accept a plain http:// controller URL on another host, whose token and job bytes then cross the network unencrypted (driver `orchard.allow_plain_http`; driver default: only a loopback http:// URL).";
      };
      maxVmAge = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Seconds after which the sweep deletes a VM of this runner that no live job holds; a job with a longer timeout is refused (driver `orchard.max_vm_age`; driver default 86400).";
      };
    };
  };
}
