/* AutoencoderKL's parameters from its config (see vae_params.h). */
#include "vae_params.h"

#include <stdio.h>

/* ResnetBlock2D(in, out) without time embedding */
static void resnet(plist *l, const char *pre, int64_t in, int64_t out) {
    char n[160];
    snprintf(n, sizeof n, "%s.norm1", pre); norm(l, n, in);
    snprintf(n, sizeof n, "%s.conv1", pre); conv(l, n, out, in, 3);
    snprintf(n, sizeof n, "%s.norm2", pre); norm(l, n, out);
    snprintf(n, sizeof n, "%s.conv2", pre); conv(l, n, out, out, 3);
    if (in != out) { snprintf(n, sizeof n, "%s.conv_shortcut", pre); conv(l, n, out, in, 1); }
}

/* UNetMidBlock2D: resnet, single-head attention (to_q/k/v/out.0 linears), resnet */
static void mid(plist *l, const char *pre, int64_t c, int attn) {
    char n[160];
    snprintf(n, sizeof n, "%s.mid_block.resnets.0", pre); resnet(l, n, c, c);
    if (attn) {
        snprintf(n, sizeof n, "%s.mid_block.attentions.0.group_norm", pre); norm(l, n, c);
        const char *proj[4] = {"to_q", "to_k", "to_v", "to_out.0"};
        for (int i = 0; i < 4; i++) {
            snprintf(n, sizeof n, "%s.mid_block.attentions.0.%s", pre, proj[i]);
            linear(l, n, c, c, 1);
        }
    }
    snprintf(n, sizeof n, "%s.mid_block.resnets.1", pre); resnet(l, n, c, c);
}

#define MAXB 8

void vae_params(const cJSON *cfg, plist *l) {
    int boc[MAXB], nb = qd_json_ints(cfg, "block_out_channels", boc, MAXB);
    if (nb < 1) die("config: block_out_channels must be a list of 1 to %d ints", MAXB);
    int layers = qd_json_int(cfg, "layers_per_block", 1), latent = qd_json_int(cfg, "latent_channels", 4);
    int in_ch = qd_json_int(cfg, "in_channels", 3), out_ch = qd_json_int(cfg, "out_channels", 3);
    int attn = qd_json_bool(cfg, "mid_block_add_attention", 1);
    char n[160];
    /* encoder */
    conv(l, "encoder.conv_in", boc[0], in_ch, 3);
    for (int i = 0; i < nb; i++) {
        int64_t cin = i ? boc[i - 1] : boc[0];
        for (int j = 0; j < layers; j++) {
            snprintf(n, sizeof n, "encoder.down_blocks.%d.resnets.%d", i, j);
            resnet(l, n, j ? boc[i] : cin, boc[i]);
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            conv(l, n, boc[i], boc[i], 3);
        }
    }
    mid(l, "encoder", boc[nb - 1], attn);
    norm(l, "encoder.conv_norm_out", boc[nb - 1]);
    conv(l, "encoder.conv_out", 2 * latent, boc[nb - 1], 3);
    /* decoder: up blocks walk the channels in reverse, layers + 1 resnets each */
    conv(l, "decoder.conv_in", boc[nb - 1], latent, 3);
    mid(l, "decoder", boc[nb - 1], attn);
    for (int i = 0; i < nb; i++) {
        int64_t cin = boc[i ? nb - i : nb - 1], cout = boc[nb - 1 - i];
        for (int j = 0; j <= layers; j++) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.%d", i, j);
            resnet(l, n, j ? cout : cin, cout);
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            conv(l, n, cout, cout, 3);
        }
    }
    norm(l, "decoder.conv_norm_out", boc[0]);
    conv(l, "decoder.conv_out", out_ch, boc[0], 3);
    if (qd_json_bool(cfg, "use_quant_conv", 1)) conv(l, "quant_conv", 2 * latent, 2 * latent, 1);
    if (qd_json_bool(cfg, "use_post_quant_conv", 1)) conv(l, "post_quant_conv", latent, latent, 1);
}
