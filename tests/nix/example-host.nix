# An example host with two runners. Used by the flake's darwin check, by the evaluation
# tests, and shown in docs/nix-darwin.md.
{
  system.primaryUser = "ci";
  system.stateVersion = 6;
  nixpkgs.config.allowUnfreePackages = [ "tart" ];

  services.gitlab-runner-tart = {
    enable = true;
    concurrency = 2;
    runners = {
      macos = {
        url = "https://gitlab.example.com";
        authenticationTokenFile = "/Users/ci/.config/gitlab-runner/macos.token";
        limit = 2;
        buildsDir = "/Users/ci/tart/builds";
        cacheDir = "/Users/ci/tart/cache";
        volumes = [ "/Users/ci/tart/shared:/Volumes/shared:ro" ];
        allowImages = [ "^ghcr\\.io/cirruslabs/macos-.*$" ];
        defaultImage = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest";
        pullPolicy = "if-not-present";
        sshUser = "admin";
        sshPasswordFile = "/Users/ci/.config/gitlab-runner/guest-password";
        cpu = "auto";
        memory = "auto";
        environment = [ "LANG=en_US.UTF-8" ];
      };
      linux = {
        name = "tart-linux";
        url = "https://gitlab.example.com";
        authenticationTokenFile = "/Users/ci/.config/gitlab-runner/linux.token";
        limit = 1;
        cacheDir = "/Users/ci/tart/cache";
        defaultImage = "ghcr.io/cirruslabs/ubuntu:latest";
        cpu = 4;
        memory = 8192;
        settings.macos_vm_limit = 2;
        extraConfig.request_concurrency = 2;
      };
    };
  };
}
