/* Built-in configs for a single-file checkpoint quantized without --config-from:
 * what the shapes tell (channels, layer counts, attention layout, embedding sizes,
 * guidance embedding, ...) is read from the converted tensors; what they cannot
 * tell (head counts of the UNet, norm groups, VAE scaling factor, activation of the
 * text encoders, RoPE axes) is the value of the family's released models, which is
 * also what diffusers' from_single_file takes from the model's hub config. The
 * scheduler and model_index.json are the released pipelines' ones. */
#include "convert/single_file_map.h"
#include "convert/pyjson.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const qd_st_tensor *find(const qd_sf_component *c, const char *fmt, long i, long j) {
    char k[512];
    snprintf(k, sizeof k, fmt, i, j);
    return qd_st_find(&c->view, k);
}

/* How many of fmt's tensors exist for index 0, 1, ...: fmt has one %ld (the
 * counted index) or two (i, then the counted index). */
static long count(const qd_sf_component *c, const char *fmt, long i) {
    long n = 0;
    int two = strstr(fmt, "%ld") != strrchr(fmt, '%');
    while (n < 100000 && (two ? find(c, fmt, i, n) : find(c, fmt, n, 0))) n++;
    return n;
}

static cJSON *ints(const long *v, long n) {
    cJSON *a = cJSON_CreateArray();
    for (long i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v[i]));
    return a;
}

static cJSON *strs(const char *s, long n) {
    cJSON *a = cJSON_CreateArray();
    for (long i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(s));
    return a;
}

static cJSON *raw_float(double v) {
    char b[64];
    qd_pyjson_float(v, b, sizeof b);
    return cJSON_CreateRaw(b);
}

static cJSON *missing(qd_ctx *ctx, const qd_sf_component *c, const char *what) {
    qd_fail(ctx, QD_ERR_FORMAT, "cannot infer the %s config: no %s (pass --config-from DIR)", c->name, what);
    return NULL;
}

#define MAXB 16

static cJSON *unet_config(qd_ctx *ctx, qd_sf_family fam, const qd_single_file *sf, const qd_sf_component *c) {
    const qd_st_tensor *cin = find(c, "conv_in.weight", 0, 0), *cout = find(c, "conv_out.weight", 0, 0);
    if (!cin || !cout || cin->ndim != 4 || cout->ndim != 4) return missing(ctx, c, "4-D conv_in/conv_out weights");
    long nb = 0, ch[MAXB], tl[MAXB], heads[MAXB];
    int attn[MAXB], up_attn[MAXB];
    long cross = -1;
    int linear = 0;
    while (nb < MAXB) {
        const qd_st_tensor *r = find(c, "down_blocks.%ld.resnets.0.conv1.weight", nb, 0);
        if (!r) break;
        ch[nb] = (long)r->shape[0];
        const qd_st_tensor *pi = find(c, "down_blocks.%ld.attentions.0.proj_in.weight", nb, 0);
        attn[nb] = pi != NULL;
        if (pi) linear = pi->ndim == 2;
        tl[nb] = attn[nb] ? count(c, "down_blocks.%ld.attentions.0.transformer_blocks.%ld.attn1.to_q.weight", nb) : 1;
        const qd_st_tensor *k = attn[nb] ? find(c, "down_blocks.%ld.attentions.0.transformer_blocks.0.attn2.to_k.weight", nb, 0) : NULL;
        if (k && k->ndim == 2) cross = (long)k->shape[1];
        heads[nb] = ch[nb] / 64 > 0 ? ch[nb] / 64 : 1;
        nb++;
    }
    if (!nb) return missing(ctx, c, "down_blocks.0.resnets.0.conv1.weight");
    for (long u = 0; u < nb; u++) up_attn[u] = find(c, "up_blocks.%ld.attentions.0.proj_in.weight", u, 0) != NULL;
    const qd_st_tensor *mk = find(c, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", 0, 0);
    if (cross < 0 && mk && mk->ndim == 2) cross = (long)mk->shape[1];
    if (cross < 0) return missing(ctx, c, "cross-attention (attn2.to_k) weight");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
    long L = 0;
    while (L < 1000 && find(c, "down_blocks.0.resnets.%ld.conv1.weight", L, 0)) L++;
    if (fam == QD_SF_SDXL) {
        const qd_st_tensor *a = find(c, "add_embedding.linear_1.weight", 0, 0);
        if (!a || a->ndim != 2) { cJSON_Delete(o); return missing(ctx, c, "add_embedding.linear_1.weight"); }
        long proj = (long)a->shape[1], td = 256;
        /* projection input = pooled text embedding + 6 time ids x addition_time_embed_dim */
        const qd_sf_component *te2 = qd_sf_find_component(sf, "text_encoder_2");
        const qd_st_tensor *tp = te2 ? qd_st_find(&te2->view, "text_projection.weight") : NULL;
        if (tp && tp->ndim == 2 && proj > tp->shape[0] && (proj - tp->shape[0]) % 6 == 0) td = (long)(proj - tp->shape[0]) / 6;
        cJSON_AddStringToObject(o, "addition_embed_type", "text_time");
        cJSON_AddNumberToObject(o, "addition_time_embed_dim", (double)td);
        cJSON_AddNumberToObject(o, "projection_class_embeddings_input_dim", (double)proj);
        cJSON_AddItemToObject(o, "attention_head_dim", ints(heads, nb));
    } else {
        cJSON_AddNumberToObject(o, "attention_head_dim", 8);
    }
    cJSON_AddItemToObject(o, "block_out_channels", ints(ch, nb));
    cJSON_AddNumberToObject(o, "cross_attention_dim", (double)cross);
    cJSON *down = cJSON_AddArrayToObject(o, "down_block_types");
    cJSON *up = cJSON_AddArrayToObject(o, "up_block_types");
    for (long i = 0; i < nb; i++) {
        cJSON_AddItemToArray(down, cJSON_CreateString(attn[i] ? "CrossAttnDownBlock2D" : "DownBlock2D"));
        cJSON_AddItemToArray(up, cJSON_CreateString(up_attn[i] ? "CrossAttnUpBlock2D" : "UpBlock2D"));
    }
    cJSON_AddNumberToObject(o, "in_channels", (double)cin->shape[1]);
    cJSON_AddNumberToObject(o, "layers_per_block", (double)L);
    cJSON_AddNumberToObject(o, "norm_num_groups", 32);
    cJSON_AddNumberToObject(o, "out_channels", (double)cout->shape[0]);
    cJSON_AddNumberToObject(o, "sample_size", fam == QD_SF_SDXL ? 128 : 64);
    int same = 1;
    for (long i = 1; i < nb; i++) same &= tl[i] == tl[0];
    if (same) cJSON_AddNumberToObject(o, "transformer_layers_per_block", (double)tl[0]);
    else cJSON_AddItemToObject(o, "transformer_layers_per_block", ints(tl, nb));
    cJSON_AddBoolToObject(o, "use_linear_projection", linear);
    return o;
}

static cJSON *vae_config(qd_ctx *ctx, qd_sf_family fam, const qd_sf_component *c) {
    const qd_st_tensor *ei = find(c, "encoder.conv_in.weight", 0, 0), *dout = find(c, "decoder.conv_out.weight", 0, 0),
                       *di = find(c, "decoder.conv_in.weight", 0, 0);
    if (!ei || !dout || !di || ei->ndim != 4 || dout->ndim != 4 || di->ndim != 4)
        return missing(ctx, c, "4-D encoder.conv_in / decoder.conv_in / decoder.conv_out weights");
    long nb = 0, ch[MAXB];
    while (nb < MAXB) {
        const qd_st_tensor *r = find(c, "encoder.down_blocks.%ld.resnets.0.conv1.weight", nb, 0);
        if (!r) break;
        ch[nb++] = (long)r->shape[0];
    }
    if (!nb) return missing(ctx, c, "encoder.down_blocks.0.resnets.0.conv1.weight");
    long L = 0;
    while (L < 1000 && find(c, "encoder.down_blocks.0.resnets.%ld.conv1.weight", L, 0)) L++;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
    cJSON_AddStringToObject(o, "act_fn", "silu");
    cJSON_AddItemToObject(o, "block_out_channels", ints(ch, nb));
    cJSON_AddItemToObject(o, "down_block_types", strs("DownEncoderBlock2D", nb));
    cJSON_AddBoolToObject(o, "force_upcast", fam != QD_SF_FLUX);
    cJSON_AddNumberToObject(o, "in_channels", (double)ei->shape[1]);
    cJSON_AddNumberToObject(o, "latent_channels", (double)di->shape[1]);
    cJSON_AddNumberToObject(o, "layers_per_block", (double)L);
    cJSON_AddBoolToObject(o, "mid_block_add_attention", find(c, "encoder.mid_block.attentions.0.to_q.weight", 0, 0) != NULL);
    cJSON_AddNumberToObject(o, "norm_num_groups", 32);
    cJSON_AddNumberToObject(o, "out_channels", (double)dout->shape[0]);
    cJSON_AddNumberToObject(o, "sample_size", fam == QD_SF_SD1 ? 512 : 1024);
    cJSON_AddItemToObject(o, "scaling_factor", raw_float(fam == QD_SF_SD1 ? 0.18215 : fam == QD_SF_SDXL ? 0.13025 : 0.3611));
    if (fam == QD_SF_FLUX) cJSON_AddItemToObject(o, "shift_factor", raw_float(0.1159));
    else cJSON_AddNullToObject(o, "shift_factor");
    cJSON_AddItemToObject(o, "up_block_types", strs("UpDecoderBlock2D", nb));
    cJSON_AddBoolToObject(o, "use_post_quant_conv", find(c, "post_quant_conv.weight", 0, 0) != NULL);
    cJSON_AddBoolToObject(o, "use_quant_conv", find(c, "quant_conv.weight", 0, 0) != NULL);
    return o;
}

static cJSON *clip_config(qd_ctx *ctx, const qd_sf_component *c, int open_clip) {
    const qd_st_tensor *tok = find(c, "text_model.embeddings.token_embedding.weight", 0, 0),
                       *pos = find(c, "text_model.embeddings.position_embedding.weight", 0, 0),
                       *fc1 = find(c, "text_model.encoder.layers.0.mlp.fc1.weight", 0, 0),
                       *proj = find(c, "text_projection.weight", 0, 0);
    if (!tok || !pos || !fc1 || tok->ndim != 2 || pos->ndim != 2 || fc1->ndim != 2)
        return missing(ctx, c, "token/position embeddings and layer 0's mlp.fc1");
    long hidden = (long)tok->shape[1];
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(c->cls));
    cJSON_AddNumberToObject(o, "attention_dropout", 0);
    cJSON_AddNumberToObject(o, "bos_token_id", 49406);
    cJSON_AddNumberToObject(o, "eos_token_id", 49407);
    cJSON_AddStringToObject(o, "hidden_act", open_clip ? "gelu" : "quick_gelu");
    cJSON_AddNumberToObject(o, "hidden_size", (double)hidden);
    cJSON_AddItemToObject(o, "initializer_factor", raw_float(1.0));
    cJSON_AddItemToObject(o, "initializer_range", raw_float(0.02));
    cJSON_AddNumberToObject(o, "intermediate_size", (double)fc1->shape[0]);
    cJSON_AddItemToObject(o, "layer_norm_eps", raw_float(1e-05));
    cJSON_AddNumberToObject(o, "max_position_embeddings", (double)pos->shape[0]);
    cJSON_AddStringToObject(o, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)(hidden / 64 > 0 ? hidden / 64 : 1));
    cJSON_AddNumberToObject(o, "num_hidden_layers", (double)count(c, "text_model.encoder.layers.%ld.mlp.fc1.weight", 0));
    cJSON_AddNumberToObject(o, "pad_token_id", 1);
    if (proj && proj->ndim == 2) cJSON_AddNumberToObject(o, "projection_dim", (double)proj->shape[0]);
    cJSON_AddStringToObject(o, "torch_dtype", tok->dtype == QD_F16 ? "float16" : tok->dtype == QD_BF16 ? "bfloat16" : "float32");
    cJSON_AddNumberToObject(o, "vocab_size", (double)tok->shape[0]);
    return o;
}

static cJSON *t5_config(qd_ctx *ctx, const qd_sf_component *c) {
    const qd_st_tensor *sh = find(c, "shared.weight", 0, 0),
                       *rab = find(c, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 0, 0),
                       *q = find(c, "encoder.block.0.layer.0.SelfAttention.q.weight", 0, 0),
                       *wi = find(c, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0, 0);
    if (!sh || !rab || !q || !wi || sh->ndim != 2 || rab->ndim != 2 || q->ndim != 2 || wi->ndim != 2 || rab->shape[1] < 1)
        return missing(ctx, c, "shared, relative_attention_bias, q and wi_0 weights");
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("T5EncoderModel"));
    cJSON_AddNumberToObject(o, "d_ff", (double)wi->shape[0]);
    cJSON_AddNumberToObject(o, "d_kv", (double)(q->shape[0] / rab->shape[1]));
    cJSON_AddNumberToObject(o, "d_model", (double)sh->shape[1]);
    cJSON_AddStringToObject(o, "dense_act_fn", "gelu_new");
    cJSON_AddStringToObject(o, "feed_forward_proj", "gated-gelu");
    cJSON_AddBoolToObject(o, "is_gated_act", 1);
    cJSON_AddItemToObject(o, "layer_norm_epsilon", raw_float(1e-06));
    cJSON_AddStringToObject(o, "model_type", "t5");
    cJSON_AddNumberToObject(o, "num_heads", (double)rab->shape[1]);
    cJSON_AddNumberToObject(o, "num_layers", (double)count(c, "encoder.block.%ld.layer.0.SelfAttention.q.weight", 0));
    cJSON_AddNumberToObject(o, "pad_token_id", 0);
    cJSON_AddNumberToObject(o, "relative_attention_max_distance", 128);
    cJSON_AddNumberToObject(o, "relative_attention_num_buckets", (double)rab->shape[0]);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", 0);
    cJSON_AddNumberToObject(o, "vocab_size", (double)sh->shape[0]);
    return o;
}

static cJSON *flux_config(qd_ctx *ctx, const qd_sf_component *c) {
    const qd_st_tensor *x = find(c, "x_embedder.weight", 0, 0), *ctxe = find(c, "context_embedder.weight", 0, 0),
                       *pool = find(c, "time_text_embed.text_embedder.linear_1.weight", 0, 0),
                       *nq = find(c, "transformer_blocks.0.attn.norm_q.weight", 0, 0), *po = find(c, "proj_out.weight", 0, 0);
    if (!x || !ctxe || !pool || !nq || !po || x->ndim != 2 || ctxe->ndim != 2 || pool->ndim != 2 || nq->ndim != 1 || po->ndim != 2)
        return missing(ctx, c, "img_in, txt_in, vector_in, final_layer weights and a query norm");
    long hidden = (long)x->shape[0], hd = (long)nq->shape[0];
    if (hd != 128) return missing(ctx, c, "RoPE axes for a head size other than FLUX.1's 128");
    if (hidden % hd) return missing(ctx, c, "whole attention heads");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "FluxTransformer2DModel");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
    cJSON_AddNumberToObject(o, "attention_head_dim", (double)hd);
    long axes[3] = {16, 56, 56};
    cJSON_AddItemToObject(o, "axes_dims_rope", ints(axes, 3));
    cJSON_AddBoolToObject(o, "guidance_embeds", find(c, "time_text_embed.guidance_embedder.linear_1.weight", 0, 0) != NULL);
    cJSON_AddNumberToObject(o, "in_channels", (double)x->shape[1]);
    cJSON_AddNumberToObject(o, "joint_attention_dim", (double)ctxe->shape[1]);
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)(hidden / hd));
    cJSON_AddNumberToObject(o, "num_layers", (double)count(c, "transformer_blocks.%ld.attn.to_q.weight", 0));
    cJSON_AddNumberToObject(o, "num_single_layers", (double)count(c, "single_transformer_blocks.%ld.attn.to_q.weight", 0));
    if (po->shape[0] == x->shape[1]) cJSON_AddNullToObject(o, "out_channels");
    else cJSON_AddNumberToObject(o, "out_channels", (double)po->shape[0]);
    cJSON_AddNumberToObject(o, "patch_size", 1);
    cJSON_AddNumberToObject(o, "pooled_projection_dim", (double)pool->shape[1]);
    return o;
}

static char *print(cJSON *o) {
    if (!o) return NULL;
    char *s = qd_pyjson_print(o, 0);
    cJSON_Delete(o);
    return s;
}

char *sf_infer_config(qd_ctx *ctx, const qd_single_file *sf, const qd_sf_component *c) {
    qd_sf_family fam = qd_sf_family_of(sf);
    cJSON *o = NULL;
    if (fam == QD_SF_SD3) o = missing(ctx, c, "inference for SD3 checkpoints (their configs come from a diffusers SD3 folder)");
    else if (!strcmp(c->name, "unet")) o = unet_config(ctx, fam, sf, c);
    else if (!strcmp(c->name, "vae")) o = vae_config(ctx, fam, c);
    else if (!strcmp(c->name, "transformer")) o = flux_config(ctx, c);
    else if (!strcmp(c->cls, "T5EncoderModel")) o = t5_config(ctx, c);
    else o = clip_config(ctx, c, !strcmp(c->cls, "CLIPTextModelWithProjection"));
    return print(o);
}

static void comp(cJSON *o, const char *name, const char *lib, const char *cls) {
    cJSON *a = cJSON_AddArrayToObject(o, name);
    if (lib) cJSON_AddItemToArray(a, cJSON_CreateString(lib));
    else cJSON_AddItemToArray(a, cJSON_CreateNull());
    if (cls) cJSON_AddItemToArray(a, cJSON_CreateString(cls));
    else cJSON_AddItemToArray(a, cJSON_CreateNull());
}

char *sf_default_model_index(qd_sf_family fam, const qd_single_file *sf) {
    (void)sf;
    cJSON *o = cJSON_CreateObject();
    if (fam == QD_SF_SD1) {
        cJSON_AddStringToObject(o, "_class_name", "StableDiffusionPipeline");
        cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
        comp(o, "feature_extractor", NULL, NULL);
        cJSON_AddBoolToObject(o, "requires_safety_checker", 0);
        comp(o, "safety_checker", NULL, NULL);
        comp(o, "scheduler", "diffusers", "PNDMScheduler");
        comp(o, "text_encoder", "transformers", "CLIPTextModel");
        comp(o, "tokenizer", "transformers", "CLIPTokenizer");
        comp(o, "unet", "diffusers", "UNet2DConditionModel");
        comp(o, "vae", "diffusers", "AutoencoderKL");
    } else if (fam == QD_SF_SDXL) {
        cJSON_AddStringToObject(o, "_class_name", "StableDiffusionXLPipeline");
        cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
        comp(o, "feature_extractor", NULL, NULL);
        cJSON_AddBoolToObject(o, "force_zeros_for_empty_prompt", 1);
        comp(o, "image_encoder", NULL, NULL);
        comp(o, "scheduler", "diffusers", "EulerDiscreteScheduler");
        comp(o, "text_encoder", "transformers", "CLIPTextModel");
        comp(o, "text_encoder_2", "transformers", "CLIPTextModelWithProjection");
        comp(o, "tokenizer", "transformers", "CLIPTokenizer");
        comp(o, "tokenizer_2", "transformers", "CLIPTokenizer");
        comp(o, "unet", "diffusers", "UNet2DConditionModel");
        comp(o, "vae", "diffusers", "AutoencoderKL");
    } else {
        cJSON_AddStringToObject(o, "_class_name", "FluxPipeline");
        cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
        comp(o, "feature_extractor", NULL, NULL);
        comp(o, "image_encoder", NULL, NULL);
        comp(o, "scheduler", "diffusers", "FlowMatchEulerDiscreteScheduler");
        comp(o, "text_encoder", "transformers", "CLIPTextModel");
        comp(o, "text_encoder_2", "transformers", "T5EncoderModel");
        comp(o, "tokenizer", "transformers", "CLIPTokenizer");
        comp(o, "tokenizer_2", "transformers", "T5TokenizerFast");
        comp(o, "transformer", "diffusers", "FluxTransformer2DModel");
        comp(o, "vae", "diffusers", "AutoencoderKL");
    }
    return print(o);
}

/* The released pipelines' schedulers: SD1.5 PNDM, SDXL Euler, FLUX.1 flow matching
 * (dev: dynamic shifting; schnell, recognised by its missing guidance embedding: shift 1). */
char *sf_default_scheduler(qd_sf_family fam, const qd_single_file *sf) {
    cJSON *o = cJSON_CreateObject();
    if (fam == QD_SF_FLUX) {
        const qd_sf_component *t = qd_sf_find_component(sf, "transformer");
        int dev = t && qd_st_find(&t->view, "time_text_embed.guidance_embedder.linear_1.weight");
        cJSON_AddStringToObject(o, "_class_name", "FlowMatchEulerDiscreteScheduler");
        cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
        cJSON_AddNumberToObject(o, "base_image_seq_len", 256);
        cJSON_AddItemToObject(o, "base_shift", raw_float(0.5));
        cJSON_AddNumberToObject(o, "max_image_seq_len", 4096);
        cJSON_AddItemToObject(o, "max_shift", raw_float(1.15));
        cJSON_AddNumberToObject(o, "num_train_timesteps", 1000);
        cJSON_AddItemToObject(o, "shift", raw_float(dev ? 3.0 : 1.0));
        cJSON_AddBoolToObject(o, "use_dynamic_shifting", dev);
        return print(o);
    }
    cJSON_AddStringToObject(o, "_class_name", fam == QD_SF_SD1 ? "PNDMScheduler" : "EulerDiscreteScheduler");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.32.2");
    cJSON_AddItemToObject(o, "beta_end", raw_float(0.012));
    cJSON_AddStringToObject(o, "beta_schedule", "scaled_linear");
    cJSON_AddItemToObject(o, "beta_start", raw_float(0.00085));
    if (fam == QD_SF_SD1) cJSON_AddBoolToObject(o, "clip_sample", 0);
    else cJSON_AddStringToObject(o, "interpolation_type", "linear");
    cJSON_AddNumberToObject(o, "num_train_timesteps", 1000);
    cJSON_AddStringToObject(o, "prediction_type", "epsilon");
    if (fam == QD_SF_SD1) {
        cJSON_AddBoolToObject(o, "set_alpha_to_one", 0);
        cJSON_AddBoolToObject(o, "skip_prk_steps", 1);
    }
    cJSON_AddNumberToObject(o, "steps_offset", 1);
    cJSON_AddStringToObject(o, "timestep_spacing", "leading");
    cJSON_AddNullToObject(o, "trained_betas");
    if (fam == QD_SF_SDXL) cJSON_AddBoolToObject(o, "use_karras_sigmas", 0);
    return print(o);
}
