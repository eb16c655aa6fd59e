{
  description = "GitLab Runner custom-executor driver that runs each job in a fresh Tart VM";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-26.05-darwin";
    nix-darwin = {
      url = "github:nix-darwin/nix-darwin/nix-darwin-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      nix-darwin,
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "aarch64-darwin"
        "aarch64-linux"
        "x86_64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (
        system: pkgs: {
          gitlab-runner-tart-driver = pkgs.callPackage ./nix/package.nix { };
          default = self.packages.${system}.gitlab-runner-tart-driver;
        }
      );

      apps = forAllSystems (
        system: _: {
          default = {
            type = "app";
            program = lib.getExe self.packages.${system}.default;
            meta.description = "Run gitlab-runner-tart-driver";
          };
        }
      );

      checks = forAllSystems (
        system: pkgs:
        import ./nix/checks.nix {
          inherit pkgs;
          package = self.packages.${system}.default;
        }
        // lib.optionalAttrs (lib.hasSuffix "darwin" system) {
          # Builds a whole nix-darwin system with the module (needs a Mac).
          darwin-module =
            (nix-darwin.lib.darwinSystem {
              modules = [
                self.darwinModules.default
                ./tests/nix/example-host.nix
                {
                  nixpkgs.hostPlatform = system;
                  services.gitlab-runner-tart.package = self.packages.${system}.default;
                }
              ];
            }).system;
        }
        // lib.optionalAttrs (lib.hasSuffix "linux" system) {
          # Builds a whole NixOS system with the Orchard runner module.
          nixos-module =
            (lib.nixosSystem {
              modules = [
                self.nixosModules.default
                ./tests/nix/example-nixos.nix
                {
                  nixpkgs.hostPlatform = system;
                  services.gitlab-runner-tart.package = self.packages.${system}.default;
                }
              ];
            }).config.system.build.toplevel;
        }
      );

      devShells = forAllSystems (
        system: pkgs: {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.default ];
            packages = [
              pkgs.clippy
              pkgs.rustfmt
              pkgs.rust-analyzer
              pkgs.nixfmt
              pkgs.shellcheck
            ];
          };
        }
      );

      formatter = forAllSystems (_: pkgs: pkgs.nixfmt-tree);

      overlays.default = final: _: {
        gitlab-runner-tart-driver = final.callPackage ./nix/package.nix { };
      };

      darwinModules = {
        gitlab-runner-tart = ./darwin-modules;
        default = self.darwinModules.gitlab-runner-tart;
      };

      # A Linux host whose runner sends every job to a VM of an Orchard fleet.
      nixosModules = {
        orchard = ./nixos-modules;
        default = self.nixosModules.orchard;
      };
    };
}
