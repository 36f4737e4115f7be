/* qdiff command line: a thin layer over include/qdiff.h, one file per subcommand. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void usage_main(FILE *f) {
    fprintf(f,
        "qdiff %s: native diffusion inference for diffusers folders\n"
        "\n"
        "usage: qdiff <command> [options]\n"
        "\n"
        "commands:\n"
        "  generate    text-to-image (or image-to-image: --init-image; inpainting: + --mask) from a\n"
        "              diffusers folder (SD1.5, SDXL, SD3.5, FLUX.1) or single file\n"
        "  vae         encode an image to latents or decode latents (diffusers VAE or TAESD)\n"
        "  inspect     what a model folder holds: parameters, bytes on disk/in memory, SDNQ layer types\n"
        "  samplers    the samplers, schedules and scheduler classes generate accepts\n"
        "  quantize    write an SDNQ diffusers folder or a comfy_quant checkpoint, LoRAs merged in\n"
        "              (--dry-run: per-layer error report)\n"
        "  serve       HTTP server: A1111- and OpenAI-compatible image APIs and a web page\n"
        "\n"
        "Run 'qdiff <command> --help' for the options of a command.\n"
        "Exit status: 0 on success, 2 on bad input or failure, 130 when cancelled.\n",
        QDIFF_VERSION);
}

int main(int argc, char **argv) {
    if (argc < 2) { usage_main(stderr); return EXIT_BAD; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) { usage_main(stdout); return 0; }
    if (!strcmp(cmd, "--version")) { printf("qdiff %s\n", QDIFF_VERSION); return 0; }
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "vae")) return cmd_vae(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "samplers")) return cmd_samplers(argc - 1, argv + 1);
    if (!strcmp(cmd, "quantize")) return cmd_quantize(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "qdiff: unknown command '%s'\n\n", cmd);
    usage_main(stderr);
    return EXIT_BAD;
}
